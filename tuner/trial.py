"""A stored trial, read the one way: its attributes by name, its reason, role and seed names,
and the value and direction of a metric.

The study loop, the proposer, validation, the decisions and the report all read trials back
from an Optuna storage. They read them through :class:`StoredTrial` instead of string keys,
so that what counts as a deployment, what is a failure and which seed a trial is are answered
in one place.

Example:
    >>> view = StoredTrial(study.trials[0])  # doctest: +SKIP
    >>> view.is_deployment, view.reason, view.role  # doctest: +SKIP
    (True, None, <Role.SEED: 'seed'>)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tuner.errors import Reason
from tuner.metrics import METRICS

__all__ = [
    "RETRY_ATTRS",
    "Attr",
    "Role",
    "StoredTrial",
    "StudyAttr",
    "deployments",
    "metric_sign",
    "metric_value",
    "seed_trial",
]


class Attr(StrEnum):
    """The user attributes the tuner writes on a trial (metrics go by their ``METRICS`` name)."""

    # What the point is: kept by a retry of the trial (RETRY_ATTRS).
    SEED_NAME = "seed_name"  # the seed file's name for this point
    SEED_ALIASES = "seed_aliases"  # further seeds of the file at the same point
    COVERAGE = "coverage"  # [dimension, json value]: an unseen value's first try
    CARRIES = "carries"  # [dimension, json value]: a winning value carried to another point
    FALLBACK = "fallback"  # the sampler only proposed known points: a fresh neighbour
    EXTERNAL = "external"  # the configuration the external server runs
    RETRY_OF = "retry_of"  # the trial lost with its worker that this one redoes
    # One attempt at it.
    WORKER = "worker"  # the run id of the worker that holds it (tuner.study.workers)
    SLOT = "slot"  # which GPU slot of --workers N --gpus ...
    FLAGS = "flags"  # the vLLM flags of the point
    ENV = "env"  # the environment variables of the point (names and values of the space's)
    DEPLOYED = "deployed"  # a server was started for it
    TRIAL_DIR = "trial_dir"  # its folder (server log, measurements.json)
    # How it ended without a measurement.
    REASON = "reason"  # a tuner.errors.Reason
    ERROR = "error"  # the message, cut to 500 characters
    LOG_TAIL = "log_tail"  # the server log's last lines
    DUPLICATE_OF = "duplicate_of"  # the trial whose measurement this proposal repeats
    CRASH_RETRIES = "crash_retries"  # redeployments after a crash
    WARM_FROM = "warm_from"  # STUDY#N: copied from (or queued after) that study's trial N
    DOMINATED_BY = "dominated_by"  # the front trial that was ahead when its measurement stopped
    ARTIFACT_ERROR = "artifact_error"  # the artifact store refused its files
    CONSTRAINTS_NOTE = "constraints_note"  # why the criteria could not be applied yet
    # The answer guard (tuner.measure.guard): its answers, and why it could not compare.
    GUARD_ANSWERS = "guard_answers"
    GUARD_NOTE = "guard_note"
    # Validation (the linked NAME.validation study).
    PHASE = "phase"
    ROUND = "round"
    CANDIDATE = "candidate"  # the search trial this deployment re-measures
    TIMING = "timing"  # tuner noise: the load timing of this deployment


# The attributes a retry keeps: they say which point, not how one attempt went.
RETRY_ATTRS = (
    Attr.SEED_NAME,
    Attr.SEED_ALIASES,
    Attr.COVERAGE,
    Attr.CARRIES,
    Attr.FALLBACK,
    Attr.EXTERNAL,
    Attr.WARM_FROM,
)


class StudyAttr(StrEnum):
    """The user attributes the tuner writes on a study (``tuner.study._setup``)."""

    OBJECTIVES = "objectives"
    UNITS = "units"
    SPACE = "space"
    DIMENSIONS = "dimensions"
    DIMENSION_LABELS = "dimension_labels"
    PROFILE = "profile"
    OBJECTIVE_FILE = "objective_file"
    CRITERIA = "criteria"
    FINGERPRINT = "fingerprint"
    SERVER_ARGS = "server_args"
    DEPLOYMENT = "deployment"
    GOAL_MET = "goal_met"
    MEASURED_WITH = "measured_with"  # what makes its measurements compare (study.warm)
    SETTLED = "settled"  # why the search ended before --trials (tuner.study._stops.Settled)
    NOISE_PRIOR = "noise_prior"  # the machine's between-deployment variation when created
    SOAK = "soak"
    # The linked validation study.
    SEARCH_STUDY = "search_study"
    ROUNDS = "rounds"
    WORKLOAD_SEED = "workload_seed"
    WORKLOAD = "workload"
    PHASE = "phase"  # validation, noise
    TIMETABLE = "timetable"  # tuner noise: the timetable's (arrival gap, turn gap)


class Role(StrEnum):
    """Why a trial measures its point: who proposed it."""

    SEED = "seed"  # a configuration of the seed file (the user's knowledge)
    COVERAGE = "coverage"  # an unseen dimension value's first try
    CARRY = "carry"  # a winning value carried across the front
    FALLBACK = "fallback"  # a fresh neighbour of the front, the sampler having nothing new
    EXTERNAL = "external"  # the running server of the external deployer
    WARM = "warm"  # from another study (--warm-start): copied, or its front queued
    VALIDATION = "validation"  # a fresh redeployment of a candidate
    SAMPLER = "sampler"  # the sampler's own proposal (TPE)


@dataclass(frozen=True, slots=True)
class StoredTrial:
    """One stored trial, as the tuner reads it."""

    trial: FrozenTrial

    @property
    def number(self) -> int:
        """The trial's number in its study."""
        return self.trial.number

    @property
    def attrs(self) -> dict[str, Any]:
        """Its user attributes."""
        return self.trial.user_attrs

    @property
    def reason(self) -> Reason | None:
        """Why it failed. A FAIL with no reason was failed by Optuna's heartbeat check (its
        worker stopped beating): that is an interruption."""
        if self.trial.state != TrialState.FAIL:
            return None
        reason = self.attrs.get(Attr.REASON)
        return Reason.INTERRUPTED if reason is None else Reason.of(reason)

    @property
    def deployed(self) -> bool:
        """A server was started for it."""
        return bool(self.attrs.get(Attr.DEPLOYED))

    @property
    def duplicate_of(self) -> int | None:
        """The trial whose measurement this one repeats without a deployment of its own."""
        d = self.attrs.get(Attr.DUPLICATE_OF)
        return int(d) if d is not None else None

    @property
    def evaluated(self) -> bool:
        """Its point's outcome is known (measured, or failed on its own account): the point
        is not tried again."""
        if self.trial.state == TrialState.COMPLETE:
            return self.duplicate_of is None
        reason = self.reason
        return reason is not None and reason.is_failure

    @property
    def is_deployment(self) -> bool:
        """It deployed a server and counts towards the study's target (``--trials``)."""
        return self.evaluated and self.deployed

    @property
    def is_failure(self) -> bool:
        """The configuration failed (what the report lists under failed trials)."""
        reason = self.reason
        return reason is not None and reason.is_failure

    @property
    def measured(self) -> bool:
        """It completed with a measurement of its own."""
        return self.trial.state == TrialState.COMPLETE and self.duplicate_of is None

    @property
    def seed_names(self) -> tuple[str, ...]:
        """The seed file's names for its point: the first, then the seeds at the same point."""
        name = self.attrs.get(Attr.SEED_NAME)
        if name is None:
            return ()
        return (str(name), *(str(a) for a in self.attrs.get(Attr.SEED_ALIASES) or ()))

    @property
    def seed_name(self) -> str | None:
        """The seed file's (first) name for its point, if a seed."""
        return self.seed_names[0] if self.seed_names else None

    def is_seed(self, name: str | None) -> bool:
        """Whether it measures the seed called ``name``."""
        return name is not None and name in self.seed_names

    @property
    def name(self) -> str:
        """Its display name: the seed's (with its aliases), else ``trial_N``."""
        return " = ".join(self.seed_names) or f"trial_{self.number}"

    @property
    def role(self) -> Role:
        """Who proposed its point."""
        a = self.attrs
        if a.get(Attr.PHASE) == "validation":
            return Role.VALIDATION
        for attr, role in (
            (Attr.WARM_FROM, Role.WARM),
            (Attr.SEED_NAME, Role.SEED),
            (Attr.EXTERNAL, Role.EXTERNAL),
            (Attr.COVERAGE, Role.COVERAGE),
            (Attr.CARRIES, Role.CARRY),
            (Attr.FALLBACK, Role.FALLBACK),
        ):
            if a.get(attr) is not None and a.get(attr) is not False:
                return role
        return Role.SAMPLER


def deployments(trials: Iterable[FrozenTrial]) -> int:
    """Deployments among ``trials``, as the study's target (``--trials``) counts them."""
    return sum(StoredTrial(t).is_deployment for t in trials)


def seed_trial(trials: Iterable[FrozenTrial], name: str | None) -> FrozenTrial | None:
    """The completed trial that measured the seed ``name`` (None: not measured yet)."""
    for t in trials:
        if t.state == TrialState.COMPLETE and StoredTrial(t).is_seed(name):
            return t
    return None


def metric_value(study: optuna.Study, t: FrozenTrial, name: str) -> float:
    """The trial's value of metric ``name``: an objective's value, else the attribute recorded
    under that name; NaN when it has none."""
    names: Sequence[str] = study.metric_names or ()
    if name in names and t.values:
        return float(t.values[list(names).index(name)])
    v = t.user_attrs.get(name)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan


def metric_sign(study: optuna.Study, name: str) -> float:
    """+1 when metric ``name`` is minimised, -1 when maximised: ``sign * value`` sorts best
    first. The study's direction for an objective, else the metric table's."""
    names: Sequence[str] = study.metric_names or ()
    if name in names:
        return -1.0 if study.directions[list(names).index(name)] == StudyDirection.MAXIMIZE else 1.0
    spec = METRICS.get(name)
    return -1.0 if spec is not None and spec.direction == "maximize" else 1.0
