"""Measure the server you started: a squatted port, another process's socket, another model."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tuner.config import LocalConfig, Profile, ServerArgs
from tuner.deploy import make_deployer
from tuner.deploy._identity import check_model, check_port_free, check_served_by, port_owner
from tuner.errors import EnvironmentFault
from tuner.testing import fake_server


def test_a_squatted_fixed_port_starts_nothing(tmp_path: Path) -> None:
    """Another OpenAI-compatible server holds the profile's fixed port: the local deployer
    refuses before starting a process, naming who holds it."""
    with fake_server(name="other-model") as other:
        port = int(other.base_url.rsplit(":", 1)[1])
        prof = Profile(
            name="squat",
            server=ServerArgs(model="m", served_model_name="m"),
            deployer=LocalConfig(port=port, module="tuner.simulate", health_timeout_s=20),
        )
        with make_deployer(prof) as dep, pytest.raises(EnvironmentFault, match="already in use"):
            dep.start([], tmp_path / "t")
        assert not (tmp_path / "t" / "process.json").exists()  # nothing was started


def test_the_listener_must_be_the_started_process_tree() -> None:
    with fake_server() as srv:
        port = int(srv.base_url.rsplit(":", 1)[1])
        assert port_owner("127.0.0.1", port) is not None
        check_served_by(port, [os.getpid()])  # this process serves it
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            with pytest.raises(EnvironmentFault, match="another process"):
                check_served_by(port, [sleeper.pid])
        finally:
            sleeper.kill()
            sleeper.wait()
        with pytest.raises(EnvironmentFault, match="already in use"):
            check_port_free("127.0.0.1", port)


def test_v1_models_must_name_the_served_model() -> None:
    with fake_server(name="other-model") as srv:
        check_model(srv.base_url, "other-model")
        with pytest.raises(EnvironmentFault, match="serves other-model, not 'tiny-llama'"):
            check_model(srv.base_url, "tiny-llama")


def test_local_deployer_measures_its_own_server(tmp_path: Path) -> None:
    """The same local deployer on a free port (a simulated server as the process) passes the
    identity checks and stops what it started."""
    prof = Profile(
        name="own",
        server=ServerArgs(model="m", served_model_name="m"),
        deployer=LocalConfig(module="tuner.simulate", health_timeout_s=30),
    )
    with make_deployer(prof) as dep:
        ep = dep.start([], tmp_path / "t")
        dep.wait_ready()
        check_model(ep.base_url, "m")


# docker-py leaks its socket when its constructor's version probe fails (inside the library,
# before a client exists to close); the error path is what is tested here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_unreachable_engine_and_external_server_are_the_machines_fault(tmp_path: Path) -> None:
    """A Docker Engine that does not answer, an external server that does not answer: `env`,
    never a crash of the configuration being measured."""
    from tuner.config import ExternalConfig
    from tuner.deploy.docker import docker_client
    from tuner.deploy.local import free_port

    with pytest.raises(EnvironmentFault, match="cannot reach the Docker Engine"):
        docker_client(f"unix://{tmp_path}/no-docker.sock")
    gc.collect()  # reap docker-py's leaked socket here, under this test's filter, not later
    prof = Profile(
        name="ext",
        server=ServerArgs(model="m"),
        deployer=ExternalConfig(url=f"http://127.0.0.1:{free_port()}", health_timeout_s=0.5),
    )
    with make_deployer(prof) as dep:
        dep.start([], tmp_path / "t")
        with pytest.raises(EnvironmentFault, match="unreachable"):
            dep.wait_ready()
