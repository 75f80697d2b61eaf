"""``tuner soak``: keep the recommended configuration under the workload and report drift."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from tuner.cli._common import (
    PROFILE,
    STUDIES,
    ObjectiveOpt,
    ProfileOpt,
    StorageOpt,
    StudiesOpt,
    app,
    objective_path,
    out,
)
from tuner.config import Profile, load_objective, load_profile
from tuner.errors import TunerError
from tuner.study import StudyPaths, load_study

_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``1h`` as seconds; a one-line error otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise typer.BadParameter(f"{text!r}: a duration like 90s, 10m or 1h")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def run_soak(paths: StudyPaths, prof: Profile, objective: Path, seconds: float) -> None:
    """Soak the study's recommendation (the validated pick when there is one)."""
    from tuner.report import recommend
    from tuner.study.soak import soak as soak_trial

    st = load_study(paths, writing=True)
    rec = recommend(st, root=paths.root)
    if rec is None:
        raise TunerError(f"study {paths.name!r} has no completed trial to soak")
    out.print(f"soak: trial {rec.trial.number} ({rec.name}) for {seconds:.0f} s")
    result = soak_trial(
        st, rec.trial, profile=prof, objective=load_objective(objective),
        workdir=paths.root / "soak", duration_s=seconds,
    )  # fmt: skip
    for w in result.windows:
        out.print(
            f"  window {w.index} at {w.started_s:.0f} s: HIT {w.ttft_hit_ms:.1f} ms, "
            f"MISS {w.ttft_miss_ms:.1f} ms, ITL p90 {w.itl_p90_ms:.1f} ms, "
            f"{w.failed_requests} failed"
        )
    out.print(f"soak: {result.verdict}")


@app.command()
def soak(
    study: Annotated[str, typer.Argument(help="study name")],
    duration: Annotated[str, typer.Option("--duration", help="how long: 90s, 10m, 1h")] = "10m",
    objective: ObjectiveOpt = None,
    profile: ProfileOpt = PROFILE,
    studies_dir: StudiesOpt = STUDIES,
    storage: StorageOpt = None,
) -> None:
    """Deploy the recommendation once and measure it window after window; report drift."""
    seconds = parse_duration(duration)
    prof = load_profile(profile)
    run_soak(StudyPaths.create(study, studies_dir, storage), prof,
             objective_path(objective, prof), seconds)  # fmt: skip
