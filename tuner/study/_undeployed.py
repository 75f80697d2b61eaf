"""Trials that end without a deployment of their own: a proposal the study already answered
(answered again from the stored trial), an invalid point, and one the machine failed (port
taken, disk full)."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.errors import Reason
from tuner.study._trial import TrialOutcome, record_failure
from tuner.trial import Attr, StoredTrial

__all__ = ["record_duplicate", "record_env_fault", "record_not_deployed"]

# What a trial that repeats another's measurement keeps of its own: who it is, not the original's.
_OWN = (Attr.SEED_NAME, Attr.SEED_ALIASES, Attr.FLAGS, Attr.DEPLOYED, Attr.FALLBACK, Attr.WORKER,
        Attr.WARM_FROM)  # fmt: skip


def _frozen(study: optuna.Study, trial: optuna.Trial) -> FrozenTrial:
    """The trial as storage holds it now."""
    return study.get_trials(deepcopy=False)[trial.number]


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
    seed = StoredTrial(_frozen(study, trial)).seed_name
    trial.set_user_attr(Attr.DUPLICATE_OF, orig.number)
    if seed is not None and orig.state == TrialState.COMPLETE:
        # A seed whose point another trial measured: reuse the measurement so the name still
        # has its row, without a second deployment.
        for k, v in orig.user_attrs.items():
            if k not in _OWN:
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
    reason = Reason.DUPLICATE
    if seed is not None:  # a seed answered by a failed trial failed the same way
        reason = StoredTrial(orig).reason or Reason.DUPLICATE
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
    """Fail ``trial`` without deploying (an invalid point)."""
    record_failure(study, trial, reason, message)
    return TrialOutcome(
        trial.number,
        params,
        "fail",
        reason,
        trial.user_attrs.get(Attr.SEED_NAME),
        duration_s=time.perf_counter() - t0,
        attrs=dict(trial.user_attrs),
    )


def record_env_fault(study: optuna.Study, trial: optuna.Trial, message: str) -> None:
    """Mark the trial ``env`` (retried on resume, never a deployment), if storage lets us:
    on a full disk it may not, and the next run fails the RUNNING trial as interrupted."""
    if _frozen(study, trial).state != TrialState.RUNNING:
        return
    with contextlib.suppress(Exception):
        trial.set_user_attr(Attr.DEPLOYED, False)
        record_failure(study, trial, Reason.ENV, message)
