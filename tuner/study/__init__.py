"""The study: the trial loop over an Optuna storage, the proposer, validation, workers."""

from __future__ import annotations

from tuner.study._signals import sigterm_as_interrupt
from tuner.study._stops import Settle
from tuner.study._trial import TrialOutcome
from tuner.study.runner import Stop, StudyRunner
from tuner.study.settings import RunResult, RunSettings
from tuner.study.storage import Heartbeat, StudyPaths, journal_problem, load_study
from tuner.study.validate import (
    ValidationResult,
    ValidationSettings,
    Validator,
    default_extra,
    validation_name,
)

__all__ = [
    "Heartbeat",
    "RunResult",
    "RunSettings",
    "Settle",
    "Stop",
    "StudyPaths",
    "StudyRunner",
    "TrialOutcome",
    "ValidationResult",
    "ValidationSettings",
    "Validator",
    "default_extra",
    "journal_problem",
    "load_study",
    "sigterm_as_interrupt",
    "validation_name",
]
