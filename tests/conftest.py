"""Shared fixtures: small files, fast workloads, fake profiles."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

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


def _cpu_bind() -> str:
    """The core a vLLM-CPU server of this test process binds its compute threads to: its own
    core per pytest-xdist worker (``gw0`` -> 0, ``gw1`` -> 1, ...), else vLLM's default. vLLM-CPU
    binds every server to core 0 by default: two workers' servers then share one core (a fixed
    load took 24 s on each of two servers at once, 13-15 s with a core each, on 2 cores)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        return "auto"
    return str(int(worker[2:]) % (os.cpu_count() or 1))


# Local servers inherit it; docker and compose tests write it into the container's environment.
CPU_BIND = os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", _cpu_bind())


def _uses_docker(node: pytest.Item | pytest.Collector) -> bool:
    """Whether a test (or a module) uses the Docker Engine: marked ``docker``, or a contract
    test of the docker or compose deployer."""
    callspec = getattr(node, "callspec", None)
    kind = callspec.params.get("deployer") if callspec is not None else None
    return node.get_closest_marker("docker") is not None or kind in ("docker", "compose")


class _EngineTurn:
    """One test process at a time uses the Docker Engine: the tests that do list and remove
    the tool's labelled containers (and the compose tests a fixed project), and another
    pytest-xdist worker's would see, or lose, its own. A lock file shared by the workers,
    taken once per process however deeply it is asked for (module, then test)."""

    def __init__(self) -> None:
        self._file: IO[str] | None = None
        self._depth = 0

    @contextlib.contextmanager
    def held(self, folder: Path) -> Iterator[None]:
        if self._depth == 0:
            self._file = (folder / "docker-engine.lock").open("w")
            fcntl.flock(self._file, fcntl.LOCK_EX)
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0 and self._file is not None:
                fcntl.flock(self._file, fcntl.LOCK_UN)
                self._file.close()
                self._file = None


_ENGINE_TURN = _EngineTurn()


@pytest.fixture(scope="session")
def _lock_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder every worker of this run shares (the parent of each worker's base temp)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="module", autouse=True)
def _docker_module_turn(request: pytest.FixtureRequest, _lock_folder: Path) -> Iterator[None]:
    """A module of docker tests holds the engine from its first module fixture to its last
    (the compose stack lives across its tests)."""
    if not _uses_docker(request.node):
        yield
        return
    with _ENGINE_TURN.held(_lock_folder):
        yield


@pytest.fixture(autouse=True)
def _docker_test_turn(request: pytest.FixtureRequest, _lock_folder: Path) -> Iterator[None]:
    """A docker test in a module of others holds the engine for itself."""
    if not _uses_docker(request.node):
        yield
        return
    with _ENGINE_TURN.held(_lock_folder):
        yield


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
    "CPU_BIND",
    "FAST_WORKLOAD",
    "ROOT",
    "docker_engine",
    "fake_profile",
    "host_env_mounts",
]
