"""A proposal the study already holds: never redeployed, answered from the stored trial."""

from __future__ import annotations

import time
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.study._trial import TrialOutcome, record_failure

__all__ = ["record_duplicate"]


def record_duplicate(
    study: optuna.Study,
    trial: optuna.Trial,
    orig: FrozenTrial,
    params: dict[str, Any],
    t0: float,
) -> TrialOutcome:
    """Record ``trial`` as a repeat of ``orig``: a seed that became the same point as another
    reuses its measurement (so the name keeps its row); any other repeat is a failed
    ``duplicate`` pointer (or the original's failure reason, for a seed)."""
    seed = trial.user_attrs.get("seed_name")
    trial.set_user_attr("duplicate_of", orig.number)
    if seed is not None and orig.state == TrialState.COMPLETE:
        # A named seed that became identical to another one: reuse the measurement so the
        # name still has its row, without a second deployment.
        for k, v in orig.user_attrs.items():
            if k not in ("seed_name", "flags", "deployed", "fallback"):
                trial.set_user_attr(k, v)
        for k, v in orig.constraints.items():
            trial.set_constraint(k, v)
        study.tell(trial, orig.values)
        return TrialOutcome(
            trial.number,
            params,
            "complete",
            None,
            seed,
            tuple(orig.values),
            duplicate_of=orig.number,
            duration_s=time.perf_counter() - t0,
            attrs=dict(trial.user_attrs),
        )
    reason = "duplicate"
    if seed is not None:
        reason = str(orig.user_attrs.get("reason", "duplicate"))
    record_failure(
        study, trial, reason, f"same configuration as trial {orig.number}; not redeployed"
    )
    return TrialOutcome(
        trial.number,
        params,
        "fail",
        reason,
        seed,
        duplicate_of=orig.number,
        duration_s=time.perf_counter() - t0,
        attrs=dict(trial.user_attrs),
    )
