"""``tuner noise``: how far fresh deployments of one configuration land apart on this machine."""

from __future__ import annotations

import math
import time
from typing import Annotated

import typer
from rich.table import Table

from tuner.cli._common import (
    PROFILE,
    SEEDS,
    SPACE,
    STUDIES,
    ObjectiveOpt,
    ProfileOpt,
    SeedsOpt,
    SpaceOpt,
    StorageOpt,
    StudiesOpt,
    app,
    objective_path,
    out,
    trial_line,
)
from tuner.config import load_objective, load_profile, load_seeds, load_space
from tuner.decide.noise import NoisePrior, Spread
from tuner.errors import ConfigError
from tuner.study import StudyPaths
from tuner.study.noise import TIMINGS, NoiseRun, NoiseSettings


def _pct(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{x:.1%}"


def _table(spreads: list[Spread]) -> Table:
    table = Table(title="between fresh deployments of one configuration")
    for c in ("timing", "metric", "per deployment", "CV", "max/min", "within one (±)",
              "same request CV p50/p90", "in flight at HIT", "late ms"):  # fmt: skip
        table.add_column(c)
    for s in spreads:
        table.add_row(
            s.timing, s.metric, ", ".join(f"{x:.1f}" for x in s.medians), _pct(s.cv),
            f"{s.max_over_min:.3f}", _pct(s.within),
            f"{_pct(s.request_cv[0])} / {_pct(s.request_cv[1])}", f"{s.in_flight:.1f}",
            "–" if s.late_ms is None else f"{s.late_ms:.0f}",
        )  # fmt: skip
    return table


@app.command()
def noise(
    deployments: Annotated[
        int, typer.Option("--deployments", min=2, help="fresh deployments per timing")
    ] = 4,
    seed_name: Annotated[
        str | None,
        typer.Option("--seed", help="which seed's configuration (default: the first seed)"),
    ] = None,
    timings: Annotated[
        str, typer.Option("--timings", help="load timings, interleaved: closed,timetable")
    ] = ",".join(TIMINGS),
    study: Annotated[
        str | None, typer.Option("--study", help="study name (default: PROFILE-noise)")
    ] = None,
    space: SpaceOpt = SPACE,
    seeds: SeedsOpt = SEEDS,
    objective: ObjectiveOpt = None,
    profile: ProfileOpt = PROFILE,
    studies_dir: StudiesOpt = STUDIES,
    storage: StorageOpt = None,
    timeout: Annotated[float | None, typer.Option("--timeout", min=1)] = None,
) -> None:
    """Deploy one configuration DEPLOYMENTS times per load timing; print how far its figures
    move between fresh deployments and within one, and keep that as this machine's prior."""
    sp, prof = load_space(space), load_profile(profile)
    chosen = [t.strip() for t in timings.split(",") if t.strip()]
    if not chosen or set(chosen) - set(TIMINGS):
        raise ConfigError(f"--timings {timings!r}: choose among {', '.join(TIMINGS)}")
    seed_list = load_seeds(seeds, sp)
    pick = next((s for s in seed_list if seed_name in (None, s.name)), None)
    if pick is None:
        raise ConfigError(f"no seed {seed_name!r} in {seeds}", key="--seed")
    obj = load_objective(objective_path(objective, prof))
    paths = StudyPaths.create(study if study is not None else f"{prof.name}-noise", studies_dir,
                              storage)  # fmt: skip
    out.print(f"noise: {pick.name} deployed {deployments} times per timing ({', '.join(chosen)})")
    deadline = time.monotonic() + timeout if timeout else None
    result = NoiseRun(
        paths=paths, space=sp, objective=obj, profile=prof, params=dict(pick.params),
        settings=NoiseSettings(deployments, tuple(chosen), deadline),
        on_trial_end=lambda o: out.print(trial_line(o)),
    ).run()  # fmt: skip
    if result.gaps is not None:
        out.print(f"timetable sized to the closed loop: a conversation every "
                  f"{result.gaps[0]:.2f} s, a turn every {result.gaps[1]:.2f} s")  # fmt: skip
    out.print(_table(list(result.spreads)))
    own = obj.workload.timing if obj.workload.timing in chosen else chosen[0]
    hit = next((s for s in result.spreads if s.timing == own and s.metric == "ttft_hit_ms"), None)
    if hit is not None and math.isfinite(hit.cv):
        prior = NoisePrior.measured(hit, prof.deployer.kind, f"tuner noise {paths.name}")
        where = prior.save(studies_dir)
        out.print(f"prior for later studies here: {prior.words()} -> {where}")
    if result.done < result.planned:
        out.print(f"only {result.done} of {result.planned} deployments measured (resumable)")
