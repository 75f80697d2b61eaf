"""One asked trial, run to its end: the step the search and validation share.

Given a trial Optuna has just handed out (``study.ask()``), :func:`run_trial` draws its point,
rejects it if vLLM would refuse the flags, answers it from storage if the study measured it
already, and otherwise deploys, measures, records and tells (``tuner.study._trial``). Failures
of the configuration are data; the machine's faults and Ctrl-C mark the trial and propagate,
as Optuna's ``_run_trial`` does with the exceptions it does not catch.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.config.objective import ObjectiveFile
from tuner.config.profile import Profile
from tuner.config.space import ParamValue, SearchSpace
from tuner.deploy.base import Deployer
from tuner.errors import EnvironmentFault, Reason
from tuner.study._trial import TrialOutcome, record_failure
from tuner.study._undeployed import record_duplicate, record_env_fault, record_not_deployed
from tuner.study.artifacts import ArtifactStore
from tuner.trial import Attr, StoredTrial

__all__ = ["TrialContext", "run_trial"]

OnStart = Callable[[int, dict[str, Any], str | None], None]


@dataclass(frozen=True, slots=True)
class TrialContext:
    """What every trial of one loop is run with.

    ``invalid(params)``: why vLLM would refuse the point (empty: it would not); ``trial_dir``:
    a trial number's folder; ``evaluate``: deploy, measure and tell (benchmarks draw from a
    surface instead); ``check_measured``: answer a point the study measured from storage.
    """

    space: SearchSpace
    profile: Profile
    objective: ObjectiveFile
    make_deployer: Callable[[Profile], Deployer]
    evaluate: Callable[..., TrialOutcome]
    trial_dir: Callable[[int], Path]
    invalid: Callable[[dict[str, ParamValue]], list[str]] = lambda params: []
    check_measured: bool = True
    store: ArtifactStore | None = None
    worker: str | None = None
    slot: str | None = None
    on_start: OnStart | None = None
    early_stop: bool = False  # the search's dominated stop (tuner.study._stops)


def run_trial(study: optuna.Study, trial: optuna.Trial, ctx: TrialContext) -> TrialOutcome:
    """Draw, check, deploy, measure and tell ``trial``; its outcome.

    KeyboardInterrupt marks the trial ``interrupted``; a full disk or another machine fault
    (EnvironmentFault) marks it ``env``; both propagate (the study stops, resumable).
    """
    t0 = time.perf_counter()
    space = ctx.space
    params = {d.name: trial.suggest_categorical(d.name, list(d.choices)) for d in space.dimensions}
    flags, env = space.to_flags(params), space.to_env(params)
    for key, value in (
        (Attr.WORKER, ctx.worker),
        (Attr.SLOT, ctx.slot),
        (Attr.FLAGS, flags),
        (Attr.ENV, env or None),
    ):
        if value is not None:
            trial.set_user_attr(key, value)
    if ctx.on_start is not None:
        ctx.on_start(trial.number, params, trial.user_attrs.get(Attr.SEED_NAME))
    try:
        # A point the study already answered (measured, or rejected) first: a sampler that
        # keeps proposing it shows up as duplicates, which the proposer steps in against.
        orig = _measured(study, space, params, trial.number) if ctx.check_measured else None
        if orig is not None:
            return record_duplicate(study, trial, orig, params, t0)
        # Only samplers outside the proposer (grid, random) draw a conditional dimension
        # where it does not exist: one configuration under two keys would be measured twice.
        odd = space.consistent(params)
        problems = [odd] if odd is not None else ctx.invalid(params)
        if problems:
            why = "; ".join(problems)
            return record_not_deployed(study, trial, params, Reason.INVALID, why, t0)
        folder = ctx.trial_dir(trial.number)
        trial.set_user_attr(Attr.DEPLOYED, True)
        trial.set_user_attr(Attr.TRIAL_DIR, str(folder))
        return ctx.evaluate(
            study,
            trial,
            flags=flags,
            trial_dir=folder,
            profile=ctx.profile,
            objective=ctx.objective,
            make_deployer=ctx.make_deployer,
            crash_retries=ctx.profile.deployer.crash_retries,
            env=env,
            # only when there is a store: the benchmarks' evaluators take no such argument
            **({"artifacts": ctx.store} if ctx.store is not None else {}),
            **({"early_stop": True} if ctx.early_stop else {}),
        )
    except KeyboardInterrupt:
        if study.get_trials(deepcopy=False)[trial.number].state == TrialState.RUNNING:
            record_failure(study, trial, Reason.INTERRUPTED, "interrupted by Ctrl-C / SIGTERM")
        raise
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        record_env_fault(study, trial, f"disk full: {exc}")
        raise EnvironmentFault(f"disk full while trial {trial.number} ran: {exc}") from exc
    except EnvironmentFault as exc:
        record_env_fault(study, trial, str(exc))
        raise


def _measured(
    study: optuna.Study, space: SearchSpace, params: dict[str, ParamValue], number: int
) -> FrozenTrial | None:
    """The first trial that evaluated the point ``params``, other than trial ``number``: a
    seed queued for a point another trial measured, or a sampler that re-proposes points."""
    key = space.key(params)
    for t in study.get_trials(deepcopy=False):
        if t.number != number and StoredTrial(t).evaluated and space.key(t.params) == key:
            return t
    return None
