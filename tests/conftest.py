"""Shared fixtures: small files, fast workloads, fake profiles."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from tuner.config import ObjectiveFile, load_objective, load_seeds, load_space
from tuner.config.seeds import Seed
from tuner.config.space import SearchSpace
from tuner.testing import FAST_WORKLOAD, fake_profile

ROOT = Path(__file__).resolve().parents[1]
# Empty image made by scripts/docker.sh: containers run this machine's Python, bind-mounted.
HOST_ENV_IMAGE = "vllm-tuner/host-env:latest"
# A point of search_spaces/seed_192.yaml: prefix caching and chunked prefill on, memory 0.95,
# the scheduler's limits at vLLM's defaults (tests vary one setting from it).
BASE_POINT: dict[str, object] = {
    "gpu_memory_utilization": 0.95,
    "enable_prefix_caching": True,
    "enable_chunked_prefill": True,
    "max_num_seqs": None,
    "max_num_batched_tokens": None,
}


def docker_engine() -> Any:
    """A Docker client with the test image present; skip (fail in CI) without one."""
    import docker

    from tuner.deploy.docker import docker_client
    from tuner.errors import EnvironmentFault

    client = None
    try:
        client = docker_client()  # the library's own check: reachable, or one EnvironmentFault
        client.images.get(HOST_ENV_IMAGE)
    except (EnvironmentFault, docker.errors.DockerException) as exc:
        if client is not None:
            client.close()
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the docker tests (bash scripts/docker.sh): {exc}")
        pytest.skip(f"no Docker Engine or no {HOST_ENV_IMAGE} (bash scripts/docker.sh): {exc}")
    return client


def host_env_mounts(*extra: str | Path) -> dict[str, str]:
    """Read-only mounts a container of the test image needs: system, the Python the venv points
    at, the project (with .venv) and ``extra`` paths (e.g. the model)."""
    # /lib64 and /bin are symlinks on merged-/usr systems: docker mounts what they point to,
    # which is what the dynamic loader path (/lib64/ld-linux-x86-64.so.2) needs.
    system = [p for p in ("/usr", "/lib", "/lib64", "/bin", "/etc") if Path(p).exists()]
    paths = [*system, sys.base_prefix, str(ROOT), *(str(p) for p in extra)]
    return {p: f"{p}:ro" for p in paths}


@pytest.fixture
def space() -> SearchSpace:
    return load_space(ROOT / "search_spaces" / "seed_192.yaml")


@pytest.fixture
def seeds(space: SearchSpace) -> tuple[Seed, ...]:
    return load_seeds(ROOT / "configs" / "strategic_12.yaml", space)


@pytest.fixture
def objective() -> ObjectiveFile:
    obj = load_objective(ROOT / "objectives" / "agent_multiturn.yaml")
    return obj.model_copy(update={"workload": FAST_WORKLOAD})


__all__ = [
    "BASE_POINT",
    "FAST_WORKLOAD",
    "ROOT",
    "docker_engine",
    "fake_profile",
    "host_env_mounts",
]
