"""Tuning one service of the user's running compose stack, then handing it back (real Docker).

The stack is up before the study: the tuned service (a simulated vLLM, `python -m
tuner.simulate`, with a `container_name:`, an anchor merge, `--flag=value` items, a `${VAR:-}`
default and its own healthcheck) and a sidecar. A 2-trial study, then a SIGTERM mid-trial, then a
kill -9 mid-trial + `tuner restore`: each time the file is back byte-for-byte, the sidecar was
never restarted (same container id and start time) and the service runs its original flags.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import docker.errors
import httpx
import pytest

from tests.conftest import HOST_ENV_IMAGE, docker_engine, host_env_mounts
from tuner.deploy.compose import compose_command
from tuner.deploy.local import free_port

pytestmark = [pytest.mark.integration, pytest.mark.docker]
docker = pytest.importorskip("docker")

PY = sys.executable
STACK = """\
# the user's stack: comments, anchors and the sidecar must survive
x-common: &common
  image: {image}
  network_mode: host
  volumes:
{volumes}
services:
  sim:
    <<: *common
    container_name: mystack-sim-fixed
    entrypoint: ["{py}", "-m", "tuner.simulate"]
    command:
      - "--model"
      - "${{SIM_MODEL:-fake-model}}"
      - "--host=127.0.0.1"
      - "--port={port}"
      - "--max-num-seqs=64"
      - "--fake-startup-s"
      - "2"
    healthcheck:
      test: ["CMD", "{py}", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:{port}/health')"]
      interval: 1s
      timeout: 2s
      retries: 30
  sidecar:
    <<: *common
    entrypoint: ["{py}", "-c", "import time; time.sleep(10**6)"]
"""
OBJECTIVE = """\
name: stack
objectives:
  - {name: ttft_hit_ms}
  - {name: ttft_miss_ms}
criteria: null
workload: {system_prompt_words: 200, tools: 2, turns: 3, conversations: 3, max_tokens: 4}
"""
SEEDS = """\
seeds:
  - name: baseline_reference
    params: {gpu_memory_utilization: 0.9, enable_prefix_caching: false, enable_chunked_prefill: true,
             max_num_seqs: null, max_num_batched_tokens: null}
  - name: prefix_only
    params: {gpu_memory_utilization: 0.9, enable_prefix_caching: true, enable_chunked_prefill: true,
             max_num_seqs: 32, max_num_batched_tokens: null}
"""


@pytest.fixture
def stack(tmp_path: Path) -> Any:
    client = docker_engine()
    port = free_port()
    folder = tmp_path / "mystack"  # the project compose names after the folder
    folder.mkdir()
    vols = "\n".join(f'    - "{h}:{c}"' for h, c in host_env_mounts().items())
    compose = folder / "docker-compose.yml"
    compose.write_text(STACK.format(image=HOST_ENV_IMAGE, volumes=vols, py=PY, port=port))
    base = [*compose_command(), "-f", str(compose)]
    subprocess.run([*base, "up", "-d"], check=True, capture_output=True, cwd=folder)
    (tmp_path / "objective.yaml").write_text(OBJECTIVE)
    (tmp_path / "seeds.yaml").write_text(SEEDS)
    (tmp_path / "profile.yaml").write_text(
        f"name: stack\nserver: {{model: fake-model, max_model_len: 4096}}\n"
        f"deployer:\n  kind: compose\n  file: {compose}\n  service: sim\n"
        f"  url: http://127.0.0.1:{port}\n  health_timeout_s: 60\n  stop_timeout_s: 5\n"
    )
    _wait(lambda: _health(port))
    try:
        yield client, compose, port, tmp_path
    finally:
        subprocess.run([*base, "down", "-t", "1"], capture_output=True, cwd=folder, check=False)
        client.close()


def _health(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _wait(pred: Any, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.3)


def _state(client: Any) -> dict[str, tuple[str, str, list[str], bool]]:
    """Per service of the project: container id, start time, command, running."""
    # The list is a listing then one inspect per container: a trial's container
    # removed between the two raises NotFound, so the snapshot is taken again.
    for _ in range(20):
        try:
            return _snapshot(client)
        except docker.errors.NotFound:
            time.sleep(0.2)
    return _snapshot(client)


def _snapshot(client: Any) -> dict[str, tuple[str, str, list[str], bool]]:
    out = {}
    for c in client.containers.list(
        all=True, filters={"label": "com.docker.compose.project=mystack"}
    ):
        svc = c.labels["com.docker.compose.service"]
        st = c.attrs["State"]
        out[svc] = (
            c.id,
            st["StartedAt"],
            list(c.attrs["Config"]["Cmd"] or []),
            bool(st["Running"]),
        )
    return out


def _tuner(tmp: Path, study: str, *extra: str) -> list[str]:
    return [
        PY, "-m", "tuner.cli", "optimize", "--trials", "2", "--study", study,
        "--seeds", str(tmp / "seeds.yaml"), "--objective", str(tmp / "objective.yaml"),
        "--profile", str(tmp / "profile.yaml"), "--studies-dir", str(tmp / "studies"),
        "--no-validate", *extra,
    ]  # fmt: skip


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _handed_back(client: Any, before: dict[str, Any], compose: Path, sha: str, port: int) -> None:
    assert _sha(compose) == sha  # the file, byte-for-byte
    assert not compose.with_name(compose.name + ".vllm-tuner.bak").exists()
    assert not compose.with_name(compose.name + ".vllm-tuner.state.json").exists()
    now = _state(client)
    assert now["sidecar"] == before["sidecar"]  # never restarted: same id, same start time
    _wait(lambda: _state(client)["sim"][3] and _health(port))
    sim_cmd = _state(client)["sim"][2]
    assert sim_cmd == before["sim"][2]  # the original flags, interpolation included
    assert "--max-num-seqs=64" in sim_cmd


def _trial_running(client: Any, before: dict[str, Any]) -> bool:
    sim = _state(client).get("sim")
    return sim is not None and sim[2] != before["sim"][2]


def test_study_sigterm_and_kill_hand_the_stack_back(stack: Any) -> None:
    client, compose, port, tmp = stack
    sha, before = _sha(compose), _state(client)
    assert set(before) == {"sim", "sidecar"}
    assert before["sim"][3]

    # 1. a whole study inside the user's project (no `project:` in the profile)
    run = subprocess.run(_tuner(tmp, "s1"), capture_output=True, text=True, timeout=600,
                         check=False)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "running its original configuration again" in run.stdout
    _handed_back(client, before, compose, sha, port)
    out = run.stdout
    assert "2 deployments" in out

    # 2. SIGTERM while a trial's server is up
    proc = subprocess.Popen(_tuner(tmp, "s2"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(lambda: _trial_running(client, before))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    assert proc.returncode == 130
    _handed_back(client, before, compose, sha, port)

    # 3. kill -9 while a trial's server is up, then `tuner restore FILE`
    proc = subprocess.Popen(_tuner(tmp, "s3"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _wait(lambda: _trial_running(client, before))
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert _sha(compose) != sha  # left rewritten by the killed run
    restore = subprocess.run([PY, "-m", "tuner.cli", "restore", str(compose)],
                             capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert restore.returncode == 0, restore.stdout + restore.stderr
    _handed_back(client, before, compose, sha, port)


def test_a_container_name_conflict_is_the_machines_fault(stack: Any) -> None:
    """Pointed at another project, the tuned service's `container_name:` collides with the
    running stack: one line and exit 2 (not a crashed configuration), the trial is `env`, the
    file is back and the running stack was not touched."""
    client, compose, port, tmp = stack
    sha, before = _sha(compose), _state(client)
    prof = tmp / "profile.yaml"
    prof.write_text(prof.read_text() + "  project: otherproj\n")
    run = subprocess.run(_tuner(tmp, "nc"), capture_output=True, text=True, timeout=300,
                         check=False)  # fmt: skip
    assert run.returncode == 2, run.stdout + run.stderr
    err = run.stderr.strip().splitlines()
    assert len(err) == 1
    assert "already in use" in err[0] or "Conflict" in err[0]
    import optuna

    st = optuna.load_study(study_name="nc", storage=f"sqlite:///{tmp / 'studies/nc/study.db'}")
    failed = [t for t in st.trials if t.state == optuna.trial.TrialState.FAIL]
    assert [t.user_attrs.get("reason") for t in failed] == ["env"]  # the other seed: still queued
    assert _sha(compose) == sha
    assert _state(client) == before
