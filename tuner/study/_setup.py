"""What a study is made with, stored once and checked on every resume; where its files go.

A new study stores what the report needs to read it back without the YAML files: objectives
and units, the space's dimensions and labels, the criteria, the fixed server arguments and the
deployment hints (never environment values). A resumed one is refused when it was made with
another space, other objectives or other settings (``tuner.study._fingerprint``).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import optuna

from tuner.config.objective import ObjectiveFile
from tuner.config.profile import Profile
from tuner.config.space import SearchSpace
from tuner.decide.noise import NoisePrior
from tuner.deploy import deployment_hints
from tuner.errors import StudyError
from tuner.study._fingerprint import differences, fingerprint
from tuner.study.artifacts import STORE_ATTR, ArtifactStore, open_store, store_of
from tuner.study.storage import MEMORY, StudyPaths
from tuner.study.warm import measured_with
from tuner.trial import StudyAttr

if TYPE_CHECKING:
    from tuner.study.settings import RunSettings

__all__ = ["artifact_store", "describe"]


def describe(
    study: optuna.Study,
    name: str,
    space: SearchSpace,
    objective: ObjectiveFile,
    profile: Profile,
    *,
    force: bool,
    exclusive: bool,
    studies: Path | None = None,
) -> None:
    """Store what a new study is made with; refuse to resume one made otherwise.

    ``exclusive`` False (a worker): the server arguments and deployment hints are left as the
    study has them, since a worker's profile is confined to its slot (its GPUs, its port).
    ``studies``: the studies folder, where this machine's noise prior is kept.
    """
    want: list[str] = [str(o.name) for o in objective.objectives]
    have = study.user_attrs.get(StudyAttr.OBJECTIVES)
    if have is None:
        with warnings.catch_warnings():
            # set_metric_names is marked experimental; the dashboard shows the names.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(want)
        study.set_user_attr(StudyAttr.OBJECTIVES, want)
        study.set_user_attr(StudyAttr.UNITS, {o.name: o.unit for o in objective.objectives})
        study.set_user_attr(StudyAttr.SPACE, space.name)
        study.set_user_attr(StudyAttr.DIMENSIONS, list(space.names))
        study.set_user_attr(StudyAttr.DIMENSION_LABELS, space.labels)
        study.set_user_attr(StudyAttr.PROFILE, profile.name)
        study.set_user_attr(StudyAttr.OBJECTIVE_FILE, objective.name)
        if objective.criteria is not None:
            study.set_user_attr(StudyAttr.CRITERIA, objective.criteria.model_dump())
        # What fresh deployments vary by on this machine with this deployer (tuner noise, or
        # an earlier study's validation): until its own repeated deployments say more.
        prior = NoisePrior.load(studies, profile.deployer.kind) if studies else None
        if prior is not None:
            study.set_user_attr(StudyAttr.NOISE_PRIOR, asdict(prior))
        # The key another study's --warm-start compares with (tuner.study.warm).
        study.set_user_attr(StudyAttr.MEASURED_WITH, measured_with(objective, profile))
    elif have != want or study.user_attrs.get(StudyAttr.SPACE) != space.name:
        raise StudyError(
            f"study {name!r} was created with space {study.user_attrs.get('space')!r} "
            f"and objectives {have}; use another --study name for space {space.name!r} "
            f"and objectives {want}"
        )
    _check_fingerprint(study, name, fingerprint(space, objective, profile), force)
    if not exclusive:
        return
    # The fixed arguments (model, max_model_len, ...) the recommendation's command line needs;
    # never the environment, which may carry secrets.
    server_args = profile.server.to_args(measuring=False)
    if study.user_attrs.get(StudyAttr.SERVER_ARGS) != server_args:
        study.set_user_attr(StudyAttr.SERVER_ARGS, server_args)
    deployment = deployment_hints(profile)
    if study.user_attrs.get(StudyAttr.DEPLOYMENT) != deployment:
        study.set_user_attr(StudyAttr.DEPLOYMENT, deployment)


def _check_fingerprint(study: optuna.Study, name: str, now: dict[str, object], force: bool) -> None:
    """Refuse to resume under other settings (space, objective, server) unless forced."""
    was = study.user_attrs.get(StudyAttr.FINGERPRINT)
    if was is not None and was != now and not force:
        diffs = "; ".join(differences(was, now))
        raise StudyError(
            f"study {name!r} was created with other settings ({diffs}): its trials would not "
            "be comparable; use another --study, or --force to resume"
        )
    if was != now:
        study.set_user_attr(StudyAttr.FINGERPRINT, now)


def artifact_store(
    study: optuna.Study, paths: StudyPaths, settings: RunSettings
) -> ArtifactStore | None:
    """Where the trials' files go: ``--artifacts``, else where the study keeps them, else
    ``STUDY/artifacts``; an in-memory study keeps none."""
    if paths.storage_url == MEMORY:
        return None
    where = settings.artifacts or store_of(study)
    if where is None:
        where = str((paths.root / "artifacts").resolve())
    if settings.exclusive and store_of(study) != where:
        study.set_user_attr(STORE_ATTR, where)
    return open_store(where)
