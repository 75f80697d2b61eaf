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

from collections.abc import Collection
from pathlib import Path

from tuner.config.profile import Profile
from tuner.deploy._identity import check_model
from tuner.deploy.base import (
    FAILURE_REASONS,
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

__all__ = [
    "DEPLOYERS",
    "DEPLOYER_KINDS",
    "FAILURE_REASONS",
    "ComposeDeployer",
    "Deployer",
    "DeployerClass",
    "DockerDeployer",
    "Endpoint",
    "ExternalDeployer",
    "FakeDeployer",
    "LocalDeployer",
    "ReplayDeployer",
    "check_model",
    "classify_exit",
    "cleanup_stale",
    "hand_back",
    "make_deployer",
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
