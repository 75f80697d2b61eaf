"""Linked studies of planned redeployments: validation (``NAME.validation``) and the noise
measurement (``NAME.noise``) share how they keep their trials.

Neither samples anything: every trial is a point queued with the attributes that place it in
the plan (its round, its candidate or timing), asked for, and run as the search runs its trials
(``tuner.study._run_trial``). The linked study lives in the search study's storage, so the
dashboard shows it and a killed run resumes where it stopped.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from typing import Any

import optuna

from tuner.config.objective import ObjectiveFile
from tuner.config.space import ParamValue
from tuner.study._run_trial import TrialContext, run_trial
from tuner.study._trial import TrialOutcome
from tuner.study.storage import StudyPaths, open_storage

__all__ = ["deploy_point", "open_linked", "past"]


def open_linked(
    paths: StudyPaths, name: str, objective: ObjectiveFile, attrs: Mapping[str, Any]
) -> optuna.Study:
    """Create or load the linked study ``name`` in ``paths``' storage; a new one gets the
    objectives' names (the dashboard shows them) and ``attrs``."""
    study = optuna.create_study(
        study_name=name,
        storage=open_storage(paths.storage_url),
        directions=[o.direction for o in objective.objectives],
        sampler=optuna.samplers.RandomSampler(seed=0),  # every trial is enqueued
        load_if_exists=True,
    )
    if not study.metric_names:
        with warnings.catch_warnings():
            # set_metric_names is marked experimental; the dashboard shows the names.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([o.name for o in objective.objectives])
        for k, v in attrs.items():
            study.set_user_attr(str(k), v)
    return study


def deploy_point(
    study: optuna.Study,
    params: Mapping[str, ParamValue],
    attrs: Mapping[str, Any],
    ctx: TrialContext,
) -> TrialOutcome:
    """Queue ``params`` with ``attrs`` (its place in the plan), ask for it and run it."""
    study.enqueue_trial(dict(params), user_attrs=dict(attrs))
    return run_trial(study, study.ask(), ctx)


def past(deadline: float | None) -> bool:
    """Whether ``--timeout``'s deadline (``time.monotonic()``) has passed: no new deployment."""
    return deadline is not None and time.monotonic() > deadline
