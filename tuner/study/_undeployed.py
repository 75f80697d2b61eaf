"""Trials that end without a deployment of their own: a proposal the study already holds
(answered from the stored trial), an invalid point, one another worker deploys or that earlier
trials make surplus, and one the environment failed (port taken, disk full)."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.study._trial import TrialOutcome, record_failure

__all__ = ["record_duplicate", "record_env_fault", "record_not_deployed"]


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


def record_not_deployed(
    study: optuna.Study,
    trial: optuna.Trial,
    params: dict[str, Any],
    reason: str,
    message: str,
    t0: float,
) -> TrialOutcome:
    """Fail ``trial`` without deploying: an invalid point, or one another worker deploys."""
    record_failure(study, trial, reason, message)
    return TrialOutcome(
        trial.number,
        params,
        "fail",
        reason,
        trial.user_attrs.get("seed_name"),
        duration_s=time.perf_counter() - t0,
        attrs=dict(trial.user_attrs),
    )


def record_env_fault(study: optuna.Study, trial: optuna.Trial, message: str) -> None:
    """Mark the trial ``env`` (retried on resume, never a deployment), if storage lets us:
    on a full disk it may not, and the next run fails the RUNNING trial as interrupted."""
    if study.get_trials(deepcopy=False)[trial.number].state != TrialState.RUNNING:
        return
    with contextlib.suppress(Exception):
        trial.set_user_attr("deployed", False)
        record_failure(study, trial, "env", message)
