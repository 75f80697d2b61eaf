"""Deployers: one small protocol, implementations picked by the profile's ``deployer.kind``."""

from __future__ import annotations

from collections.abc import Collection

from tuner.config.profile import ComposeConfig, DockerConfig, Profile
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
    "cleanup_stale",
    "make_deployer",
    "wait_healthy",
]

DEPLOYER_KINDS = ("local", "external", "docker", "compose", "replay", "fake")


def make_deployer(profile: Profile, managed_flags: Collection[str] = ()) -> Deployer:
    """The deployer for ``profile.deployer.kind``.

    ``managed_flags``: every flag the search space sets (both forms of booleans); the compose
    deployer removes them from the user's command before adding the trial's.
    """
    kind = profile.deployer.kind
    if kind == "local":
        return LocalDeployer(profile)
    if kind == "external":
        return ExternalDeployer(profile)
    if kind == "docker":
        from tuner.deploy.docker import DockerDeployer

        return DockerDeployer(profile)
    if kind == "compose":
        from tuner.deploy.compose import ComposeDeployer

        return ComposeDeployer(profile, managed_flags)
    if kind == "replay":
        from tuner.deploy.replay import ReplayDeployer

        return ReplayDeployer(profile)
    if kind == "fake":
        # The fake is a first-class sibling that lives with the other test helpers.
        from tuner.testing import FakeDeployer

        return FakeDeployer(profile)
    raise ValueError(f"deployer kind {kind!r} is not registered; known: {DEPLOYER_KINDS}")


def cleanup_stale(profile: Profile, study: str) -> list[str]:
    """Remove what an earlier, hard-killed run of ``study`` left behind; what was removed.

    docker: the study's labelled containers. compose: the project's containers, and the user's
    file restored from its backup. Other kinds start nothing that outlives the tuner.
    """
    cfg = profile.deployer
    if isinstance(cfg, DockerConfig):
        from tuner.deploy.docker import docker_client, remove_containers

        return remove_containers(docker_client(cfg.docker_host), study)
    if isinstance(cfg, ComposeConfig):
        from tuner.deploy.compose import ComposeDeployer
        from tuner.deploy.compose_file import backup_path

        if backup_path(cfg.file).exists():
            ComposeDeployer(profile).reclaim()
            return [f"{cfg.file} restored"]
    return []
