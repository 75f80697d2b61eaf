"""Deployers: one small protocol, implementations picked by the profile's ``deployer.kind``.

:data:`DEPLOYERS` is the one registry: ``kind`` to class. The profile's config union
(``tuner.config.profile.DEPLOYER_CONFIGS``) must name the same kinds, each class's
``config_type`` being that kind's model; a test checks it, so a new deployer is one class and
one config model, registered here.

Example:
    >>> with make_deployer(profile) as dep:  # doctest: +SKIP
    ...     endpoint = dep.start(flags, trial_dir)
    ...     startup_s = dep.wait_ready()
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from tuner.config.profile import Profile
from tuner.config.space import ParamValue, SearchSpace
from tuner.deploy._identity import check_model
from tuner.deploy.base import (
    Deployer,
    DeployerClass,
    Endpoint,
    classify_exit,
    wait_healthy,
)
from tuner.deploy.compose import ComposeDeployer
from tuner.deploy.docker import DockerDeployer
from tuner.deploy.external import ExternalDeployer
from tuner.deploy.fake import FakeDeployer
from tuner.deploy.local import LocalDeployer
from tuner.deploy.replay import ReplayDeployer
from tuner.errors import ConfigError
from tuner.types import WorkerSlot

__all__ = [
    "DEPLOYERS",
    "DEPLOYER_KINDS",
    "ComposeDeployer",
    "Deployer",
    "DeployerClass",
    "DockerDeployer",
    "Endpoint",
    "ExternalDeployer",
    "FakeDeployer",
    "LocalDeployer",
    "ReplayDeployer",
    "build",
    "check_model",
    "check_profile",
    "classify_exit",
    "cleanup_stale",
    "confine",
    "deployment_hints",
    "fixed_params",
    "hand_back",
    "keep",
    "make_deployer",
    "plan_slots",
    "reclaim",
    "wait_healthy",
]

DEPLOYERS: dict[str, DeployerClass] = {
    cls.kind: cls
    for cls in (
        LocalDeployer,
        ExternalDeployer,
        DockerDeployer,
        ComposeDeployer,
        ReplayDeployer,
        FakeDeployer,
    )
}
DEPLOYER_KINDS = tuple(DEPLOYERS)


def _class_of(profile: Profile) -> DeployerClass:
    """The registered class of the profile's deployer kind; ValueError for a kind no class answers
    to."""
    kind = profile.deployer.kind
    try:
        return DEPLOYERS[kind]
    except KeyError:
        raise ValueError(
            f"deployer kind {kind!r} is not registered; known: {DEPLOYER_KINDS}"
        ) from None


def make_deployer(profile: Profile, managed_flags: Collection[str] = ()) -> Deployer:
    """The deployer for ``profile.deployer.kind``.

    ``managed_flags``: every flag the search space sets (both forms of booleans); the compose
    deployer removes them from the user's command before adding the trial's.
    """
    return _class_of(profile)(profile, managed_flags)


def cleanup_stale(
    profile: Profile, study: str, root: Path | None = None, keep: Collection[Path] = ()
) -> list[str]:
    """Remove what an earlier, hard-killed run of ``study`` (folder ``root``) left behind,
    but nothing of the trial folders in ``keep`` (running now); what was removed."""
    return _class_of(profile).cleanup_stale(profile, study, root, keep)


def hand_back(profile: Profile) -> list[str]:
    """Give the user's server back as it was before the study (compose); what was done."""
    return _class_of(profile).hand_back(profile)


def reclaim(roots: Sequence[Path], study: str | None, profile: Profile | None = None) -> list[str]:
    """``tuner cleanup``: what hard-killed runs left, stopped by every kind; one line each."""
    return [line for cls in DEPLOYERS.values() for line in cls.reclaim(roots, study, profile)]


def fixed_params(profile: Profile, space: SearchSpace) -> dict[str, ParamValue] | None:
    """The one configuration the profile's server runs, when its deployer cannot change flags
    (external): the study measures that point once and validates nothing."""
    return _class_of(profile).fixed_params(profile, space)


def check_profile(profile: Profile, space: SearchSpace) -> None:
    """ConfigError, before any deployment, when the profile cannot serve ``space``."""
    _class_of(profile).check(profile, space)


def build(profile: Profile) -> str | None:
    """What serves the profile's trials (vLLM's version, the image); None: unknown."""
    return _class_of(profile).build(profile)


def deployment_hints(profile: Profile) -> dict[str, Any]:
    """What the recommendation's command lines need from the profile (image, GPUs, port,
    volumes, names of variables to pass), stored with the study: never environment values."""
    return _class_of(profile).hints(profile)


def confine(profile: Profile, slot: WorkerSlot) -> Profile:
    """``profile`` confined to one worker's slot: its GPUs and, when it fixes one, its port."""
    return _class_of(profile).confine(profile, slot)


def plan_slots(workers: int, gpus: Sequence[str] | None, profile: Profile) -> list[WorkerSlot]:
    """One slot per worker: disjoint GPU slices as wide as the tensor parallel size.

    ConfigError when the deployer tunes a single server (compose, external), or when the GPUs
    cannot be split (4 GPUs, TP 2: at most 2 workers).
    """
    cls = _class_of(profile)
    if workers > 1 and cls.one_server:
        raise ConfigError(
            f"the {cls.kind} deployer tunes one server ({cls.describe(profile)}): it cannot run "
            f"{workers} workers; use --workers 1, or a docker/local profile",
            key="deployer.kind",
        )
    if not gpus:
        return [WorkerSlot(i) for i in range(workers)]
    tp = profile.server.tensor_parallel_size
    if workers * tp > len(gpus):
        raise ConfigError(
            f"{workers} workers at tensor parallel size {tp} need {workers * tp} GPUs; "
            f"--gpus names {len(gpus)} ({','.join(gpus)})"
        )
    return [WorkerSlot(i, tuple(gpus[i * tp : (i + 1) * tp])) for i in range(workers)]


def keep(profile: Profile, flags: Sequence[str] | None, managed: Collection[str], why: str) -> str:
    """``--keep-best``: the user's service left running ``flags`` (None: only check that the
    profile's kind can); a line saying what was done."""
    return _class_of(profile).keep(profile, flags, managed, why)
