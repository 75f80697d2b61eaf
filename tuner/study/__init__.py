"""The study: Optuna storage and folders, the trial loop, dedup and failure recording."""

from __future__ import annotations

from tuner.study._signals import sigterm_as_interrupt
from tuner.study._survey import deployments
from tuner.study._trial import TrialOutcome
from tuner.study.runner import StudyRunner
from tuner.study.settings import RunResult, RunSettings
from tuner.study.storage import Heartbeat, StudyPaths, journal_problem, load_study
from tuner.study.validate import (
    ValidationResult,
    ValidationSettings,
    Validator,
    default_extra,
    validation_name,
)
from tuner.study.workers import WorkerSlot, plan_slots, slot_profile

__all__ = [
    "Heartbeat",
    "RunResult",
    "RunSettings",
    "StudyPaths",
    "StudyRunner",
    "TrialOutcome",
    "ValidationResult",
    "ValidationSettings",
    "Validator",
    "WorkerSlot",
    "default_extra",
    "deployments",
    "journal_problem",
    "load_study",
    "plan_slots",
    "sigterm_as_interrupt",
    "slot_profile",
    "validation_name",
]
