"""Read a study back: every trial as a table, the Pareto front, CSV/JSON exports with units."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from tuner.front import feasible, pareto_front
from tuner.trial import StoredTrial, StudyAttr

__all__ = ["pareto_frame", "pareto_trials", "trials_frame", "write_pareto"]

ATTR_COLUMNS = (
    "ttft_miss_p90_ms",
    "ttft_hit_p90_ms",
    "speedup",
    "gain_pct",
    "hit_rate_hit",
    "throughput_tok_s",
    "vram_source",
    "vram_gpu_max_mib",
    "startup_s",
)


def _row(study: optuna.Study, t: FrozenTrial) -> dict[str, Any]:
    """One trial as a row of trials.csv: parameters, objective values, diagnostics, feasibility
    and reason."""
    names = study.metric_names or [f"objective_{i}" for i in range(len(study.directions))]
    row: dict[str, Any] = {
        "trial": t.number,
        "state": t.state.name.lower(),
        "name": StoredTrial(t).name,
        **t.params,
    }
    for i, n in enumerate(names):
        row[n] = t.values[i] if t.values else math.nan
    for k in ATTR_COLUMNS:
        row[k] = t.user_attrs.get(k)
    row["feasible"] = feasible(t)
    row["reason"] = StoredTrial(t).reason
    row["duplicate_of"] = StoredTrial(t).duplicate_of
    return row


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per finished trial (waiting/running ones left out)."""
    done = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
    rows = [_row(study, t) for t in study.get_trials(deepcopy=False, states=done)]
    return pd.DataFrame(rows)


def pareto_trials(study: optuna.Study) -> tuple[list[FrozenTrial], bool]:
    """The front (feasible trials only when constrained) and whether it is the feasible one.

    When no trial meets the constraints the front of all completed trials is returned instead,
    flagged ``False``, so the user still sees the trade-off (``tuner.front.pareto_front``).
    """
    return pareto_front(study)


def pareto_frame(study: optuna.Study) -> tuple[pd.DataFrame, bool]:
    """The front as a table (one row per trial, as in trials.csv) and whether it is feasible."""
    front, feasible = pareto_trials(study)
    return pd.DataFrame([_row(study, t) for t in front]), feasible


def write_pareto(study: optuna.Study, outdir: Path) -> dict[str, Path]:
    """Write ``pareto.csv``, ``pareto.json`` and ``trials.csv``; JSON carries the units."""
    outdir.mkdir(parents=True, exist_ok=True)
    front, feasible = pareto_frame(study)
    trials = trials_frame(study)
    units = study.user_attrs.get(StudyAttr.UNITS, {})
    paths = {
        "pareto_csv": outdir / "pareto.csv",
        "pareto_json": outdir / "pareto.json",
        "trials_csv": outdir / "trials.csv",
    }
    front.to_csv(paths["pareto_csv"], index=False)
    trials.to_csv(paths["trials_csv"], index=False)
    payload = {
        "study": study.study_name,
        "objectives": [
            {"name": n, "direction": d.name.lower(), "unit": units.get(n, "")}
            for n, d in zip(study.metric_names or [], study.directions, strict=False)
        ],
        "criteria": study.user_attrs.get(StudyAttr.CRITERIA),
        "front_is_feasible": feasible,
        "pareto": json.loads(front.to_json(orient="records")),
    }
    paths["pareto_json"].write_text(json.dumps(payload, indent=2))
    return paths
