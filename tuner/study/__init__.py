"""The study: Optuna storage and folders, the trial loop, dedup and failure recording."""

from __future__ import annotations

from tuner.study._signals import sigterm_as_interrupt
from tuner.study._trial import TrialOutcome
from tuner.study.runner import RunResult, RunSettings, StudyRunner
from tuner.study.storage import StudyPaths, journal_problem, load_study
from tuner.study.validate import (
    ValidationResult,
    ValidationSettings,
    Validator,
    validation_name,
)

__all__ = [
    "RunResult",
    "RunSettings",
    "StudyPaths",
    "StudyRunner",
    "TrialOutcome",
    "ValidationResult",
    "ValidationSettings",
    "Validator",
    "journal_problem",
    "load_study",
    "sigterm_as_interrupt",
    "validation_name",
]
