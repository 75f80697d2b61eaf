"""Deployers: one small protocol, implementations picked by the profile's ``deployer.kind``."""

from __future__ import annotations

from tuner.config.profile import Profile
from tuner.deploy.base import FAILURE_REASONS, Deployer, Endpoint, classify_exit, wait_healthy
from tuner.deploy.external import ExternalDeployer
from tuner.deploy.local import LocalDeployer

__all__ = [
    "DEPLOYER_KINDS",
    "FAILURE_REASONS",
    "Deployer",
    "Endpoint",
    "ExternalDeployer",
    "LocalDeployer",
    "classify_exit",
    "make_deployer",
    "wait_healthy",
]

DEPLOYER_KINDS = ("local", "external", "fake")


def make_deployer(profile: Profile) -> Deployer:
    """The deployer for ``profile.deployer.kind``."""
    kind = profile.deployer.kind
    if kind == "local":
        return LocalDeployer(profile)
    if kind == "external":
        return ExternalDeployer(profile)
    if kind == "fake":
        # The fake is a first-class sibling that lives with the other test helpers.
        from tuner.testing import FakeDeployer

        return FakeDeployer(profile)
    raise ValueError(f"deployer kind {kind!r} is not registered; known: {DEPLOYER_KINDS}")
