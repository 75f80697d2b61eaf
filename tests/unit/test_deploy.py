"""One contract over every deployer kind, plus failure classification from real logs."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import HOST_ENV_IMAGE, ROOT, docker_engine, host_env_mounts
from tuner.config import (
    ComposeConfig,
    DockerConfig,
    ExternalConfig,
    LocalConfig,
    Profile,
    ReplayConfig,
    ServerArgs,
)
from tuner.deploy import DEPLOYER_KINDS, Deployer, classify_exit, make_deployer
from tuner.deploy.base import exit_cause, exited_message
from tuner.deploy.local import free_port
from tuner.errors import ServerExited, StartupTimeout
from tuner.testing import fake_profile, fake_server

DATA = Path(__file__).resolve().parents[1] / "data"


def local_profile(**kw: object) -> Profile:
    # The local deployer runs `python -m tuner.simulate`: a real child process that speaks
    # the vLLM OpenAI API, so process handling is tested without vLLM.
    cfg = {"module": "tuner.simulate", "health_timeout_s": 20.0, "stop_timeout_s": 5.0, **kw}
    return Profile(
        name="local-fake",
        server=ServerArgs(model="fake-model", max_model_len=4096),
        deployer=LocalConfig(**cfg),
    )  # type: ignore[arg-type]


def docker_profile(**kw: object) -> Profile:
    cfg = {
        "image": HOST_ENV_IMAGE,
        "entrypoint": [sys.executable, "-m", "tuner.simulate"],
        "gpus": "none",
        "network": "host",
        "volumes": host_env_mounts(),
        "shm_size": "64m",
        "health_timeout_s": 30.0,
        "stop_timeout_s": 5.0,
        **kw,
    }
    return Profile(
        name="docker-fake",
        server=ServerArgs(model="fake-model", max_model_len=4096),
        deployer=DockerConfig(**cfg),  # type: ignore[arg-type]
    )


def compose_profile(tmp: Path) -> Profile:
    port = free_port()
    vols = "\n".join(f'      - "{h}:{c}"' for h, c in host_env_mounts().items())
    file = tmp / "compose" / "docker-compose.yml"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(
        "services:\n  fake:\n"
        f"    image: {HOST_ENV_IMAGE}\n    network_mode: host\n"
        f'    entrypoint: ["{sys.executable}", "-m", "tuner.simulate"]\n'
        f"    volumes:\n{vols}\n"
        f'    command: ["--model", "fake-model", "--host", "127.0.0.1", "--port", "{port}"]\n'
    )
    return Profile(
        name="compose-fake",
        server=ServerArgs(model="fake-model", max_model_len=4096),
        deployer=ComposeConfig(
            file=file,
            service="fake",
            url=f"http://127.0.0.1:{port}",
            project="tunercontract",
            health_timeout_s=60.0,
            stop_timeout_s=5.0,
        ),  # fmt: skip
    )


@pytest.fixture(params=DEPLOYER_KINDS)
def deployer(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployer]:
    kind = request.param
    if kind == "replay":
        surface = tmp_path_factory.mktemp("r") / "surface.json"
        point = {"params": {}, "env": {}, "status": "ok", "miss_ms": [5.0], "hit_ms": [2.0]}
        surface.write_text(
            json.dumps(
                {
                    "name": "contract",
                    "points": [
                        {**point, "flags": ["--enable-prefix-caching"]},
                        {**point, "flags": []},
                    ],
                }
            )
        )
        prof = Profile(
            name="replay",
            server=ServerArgs(model="fake-model"),
            deployer=ReplayConfig(surface=surface),
        )
        yield make_deployer(prof)
        return
    if kind in ("docker", "compose"):
        docker_engine()
        prof = (
            docker_profile() if kind == "docker" else compose_profile(tmp_path_factory.mktemp("c"))
        )
        yield make_deployer(prof, managed_flags={"--enable-prefix-caching"})
        return
    if kind == "external":
        with fake_server(name="fake-model") as srv:
            prof = Profile(
                name="ext",
                server=ServerArgs(model="fake-model"),
                deployer=ExternalConfig(url=srv.base_url),
            )
            yield make_deployer(prof)
        return
    yield make_deployer(local_profile() if kind == "local" else fake_profile())


class TestContract:
    def test_start_wait_serve_stop(self, deployer: Deployer, tmp_path: Path) -> None:
        """Every deployer: start gives an endpoint that is healthy after wait_ready, logs land in
        the trial folder, and leaving the context stops what it started."""
        with deployer as dep:
            ep = dep.start(["--enable-prefix-caching"], tmp_path)
            startup = dep.wait_ready()
            assert startup >= 0
            assert httpx.get(f"{ep.base_url}/health", timeout=5).status_code == 200
            models = httpx.get(f"{ep.base_url}/v1/models", timeout=5).json()
            assert models["data"][0]["id"] == ep.model
            dep.check_alive()
            assert (tmp_path / "server.log").exists()
            pids = ep.pids
        if deployer.kind == "external":
            assert httpx.get(f"{ep.base_url}/health", timeout=5).status_code == 200  # never stopped
        else:
            with pytest.raises(httpx.HTTPError):
                httpx.get(f"{ep.base_url}/health", timeout=2)
            assert not [
                p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
            ]

    def test_stop_is_idempotent(self, deployer: Deployer, tmp_path: Path) -> None:
        """stop() may be called any number of times, started or not; after it the server no
        longer answers (but an external one, never ours), and the deployer can start again."""

        def answers(url: str) -> bool:
            try:
                return httpx.get(f"{url}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        deployer.stop()
        ep = deployer.start([], tmp_path / "a")
        deployer.wait_ready()
        assert answers(ep.base_url)
        deployer.stop()
        deployer.stop()
        assert answers(ep.base_url) is (deployer.kind == "external")
        again = deployer.start([], tmp_path / "b")
        deployer.wait_ready()
        assert answers(again.base_url)
        deployer.stop()


def test_registry_matches_the_profile_schema() -> None:
    """One registry: every deployer kind has exactly one config model and one class, and the
    class declares that model; a kind missing on either side fails here."""
    from tuner.config.profile import DEPLOYER_CONFIGS
    from tuner.deploy import DEPLOYERS

    assert set(DEPLOYERS) == set(DEPLOYER_CONFIGS) == set(DEPLOYER_KINDS)
    for kind, cls in DEPLOYERS.items():
        assert cls.kind == kind
        assert cls.config_type is DEPLOYER_CONFIGS[kind]


class TestLocal:
    def test_command_and_secrets(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """command.json has the exact argv and only the names of environment variables."""
        monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
        prof = local_profile(env={"VLLM_CPU_KVCACHE_SPACE": "1"}, pass_env=["HF_TOKEN"])
        with make_deployer(prof) as dep:
            dep.start(["--max-num-seqs", "32"], tmp_path)
            dep.wait_ready()
        text = (tmp_path / "command.json").read_text()
        assert "hf_secret_value" not in text
        assert '"HF_TOKEN"' in text
        assert '"--max-num-seqs"' in text
        assert sys.executable in text

    @pytest.mark.parametrize("profile_sets", [False, True])
    def test_bytecode_is_kept_unless_the_profile_says(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, profile_sets: bool
    ) -> None:
        """An image's PYTHONDONTWRITEBYTECODE does not reach the server (every start would
        compile torch again); a profile that sets it gets it."""
        monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
        env = {"PYTHONDONTWRITEBYTECODE": "1"} if profile_sets else {}
        with make_deployer(local_profile(env=env)) as dep:
            ep = dep.start([], tmp_path)
            dep.wait_ready()
            server_env = psutil.Process(ep.pids[0]).environ()
        assert ("PYTHONDONTWRITEBYTECODE" in server_env) is profile_sets

    def test_crash_is_classified_with_log_tail(self, tmp_path: Path) -> None:
        """A server that exits during start-up raises ServerExited(crash) with its log."""
        with make_deployer(local_profile()) as dep:
            dep.start(["--fake-crash"], tmp_path)
            with pytest.raises(ServerExited) as exc:
                dep.wait_ready()
        assert exc.value.reason == "crash"
        assert "engine core died" in exc.value.log_tail

    def test_startup_timeout(self, tmp_path: Path) -> None:
        """Not healthy in time: StartupTimeout, and the process group is gone afterwards."""
        with make_deployer(local_profile(health_timeout_s=1.0)) as dep:
            ep = dep.start(["--fake-startup-s", "30"], tmp_path)
            with pytest.raises(StartupTimeout):
                dep.wait_ready()
        assert not psutil.pid_exists(ep.pids[0]) or psutil.Process(ep.pids[0]).status() == "zombie"

    def test_sigkill_after_grace(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A server ignoring SIGTERM is killed after stop_timeout_s."""
        (tmp_path / "stubborn.py").write_text(
            "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)\n"
        )
        monkeypatch.setenv(
            "PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
        )
        dep = make_deployer(local_profile(stop_timeout_s=0.5, module="stubborn"))
        ep = dep.start([], tmp_path / "t")
        dep.stop()
        assert not psutil.pid_exists(ep.pids[0]) or psutil.Process(ep.pids[0]).status() == "zombie"


class TestFake:
    @pytest.mark.parametrize(("field", "reason"), [("crash_when", "crash"), ("oom_when", "oom")])
    def test_scripted_failures(self, tmp_path: Path, field: str, reason: str) -> None:
        """The fake fails the way the profile says, with a vLLM-like log."""
        prof = fake_profile(**{field: [{"--max-num-seqs": "128"}]})
        with make_deployer(prof) as dep:
            dep.start(["--max-num-seqs", "128"], tmp_path)
            with pytest.raises(ServerExited) as exc:
                dep.wait_ready()
        assert exc.value.reason == reason


class TestClassify:
    def test_real_vllm_validation_error_is_invalid(self) -> None:
        """vLLM-CPU 0.32's refusal of chunked-off with a small budget (captured log) → invalid."""
        assert classify_exit(1, (DATA / "vllm_invalid_budget.log").read_text()) == "invalid"

    def test_real_vllm_cpu_kv_cache_oom(self) -> None:
        """vLLM-CPU asked for more KV cache than RAM (captured log, VLLM_CPU_KVCACHE_SPACE=30) → oom."""
        assert classify_exit(1, (DATA / "vllm_cpu_kv_oom.log").read_text()) == "oom"

    @pytest.mark.parametrize(
        ("name", "reason"),
        [
            # captured on an H100 with vLLM 0.25.0 (benchmarks/results/gpu/h100-failures)
            ("vllm_gpu_invalid_budget.log", "invalid"),
            ("vllm_gpu_memory_held.log", "oom"),
            # tensor parallel 2 on 2 x H200: only GPU 1 was held, rank 1 refused to start
            # (benchmarks/results/gpu/tp2-oom)
            ("vllm_tp2_rank1_memory_held.log", "oom"),
        ],
    )
    def test_real_gpu_logs(self, name: str, reason: str) -> None:
        """GPU vLLM: SchedulerConfig refusal → invalid; a GPU already held by another process → oom,
        also when only one rank of a tensor-parallel server meets it."""
        assert classify_exit(1, (DATA / name).read_text()) == reason

    @pytest.mark.parametrize(
        ("name", "cause"),
        [
            # the mission's baseline on its emulated cards, H200, vLLM 0.25.0
            # (benchmarks/results/gpu/h200_mission): vLLM's own line, not the API server's wrapper
            ("vllm_gpu_kv_shorter_than_max_len.log",
             "ValueError: To serve at least one request with the model's max seq len (131072)"),
            ("vllm_gpu_memory_held.log", "ValueError: Free memory on device cuda:0 (18.15/79.18 GiB)"),
            ("vllm_invalid_budget.log", "ValidationError: 1 validation error for SchedulerConfig: "
             "Value error, max_num_batched_tokens (2048) is smaller than max_model_len (4096)"),
        ],
    )  # fmt: skip
    def test_the_failure_names_the_error_the_log_ends_with(self, name: str, cause: str) -> None:
        """A server that exits says why in one line: the error its log names, the wrappers
        vLLM's API server adds after it skipped; nothing added when the log names none."""
        log = (DATA / name).read_text()
        said = exited_message("server", 1, classify_exit(1, log), log)
        assert said.startswith(f"server exited with status 1 ({classify_exit(1, log)}): {cause}")
        assert "root cause" not in said
        assert len(said) < 500
        assert (
            exited_message("server", -9, "oom", "killed\n") == "server exited with status -9 (oom)"
        )
        assert (
            exit_cause("RuntimeError: Engine core initialization failed. See root cause above.")
            is None
        )

    @pytest.mark.parametrize(
        ("rc", "log", "reason"),
        [
            (-9, "", "oom"),
            (137, "", "oom"),
            (1, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate", "oom"),
            (1, "ValueError: No available memory for the cache blocks.", "oom"),
            (2, "api_server.py: error: unrecognized arguments: --bogus", "invalid"),
            (1, "RuntimeError: Engine core initialization failed", "crash"),
        ],
    )
    def test_patterns(self, rc: int, log: str, reason: str) -> None:
        """Exit status and log patterns decide crash / oom / invalid."""
        assert classify_exit(rc, log) == reason


@pytest.mark.docker
class TestDocker:
    def test_crash_and_labels_and_secrets(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A container exiting at start-up is `crash` with its log; it is removed; the secret's
        value reaches the container but neither command.json nor the labels."""
        docker_engine()
        import docker

        monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
        client = docker.from_env()
        workdir = tmp_path / "st" / "trials" / "0007"
        with make_deployer(docker_profile()) as dep:
            ep = dep.start(["--fake-crash"], workdir)
            c = client.containers.get(ep.container_id)
            assert c.labels["io.vllm-tuner.study"] == "st"
            assert c.labels["io.vllm-tuner.trial"] == "0007"
            assert "HF_TOKEN=hf_secret_value" in c.attrs["Config"]["Env"]
            with pytest.raises(ServerExited) as exc:
                dep.wait_ready()
        assert exc.value.reason == "crash"
        assert "engine core died" in exc.value.log_tail
        text = (workdir / "command.json").read_text()
        assert "hf_secret_value" not in text
        assert '"HF_TOKEN"' in text
        with pytest.raises(docker.errors.NotFound):
            client.containers.get(ep.container_id)

    def test_startup_timeout_removes_the_container(self, tmp_path: Path) -> None:
        docker_engine()
        import docker

        with make_deployer(docker_profile(health_timeout_s=1.0)) as dep:
            ep = dep.start(["--fake-startup-s", "30"], tmp_path / "s" / "trials" / "0000")
            with pytest.raises(StartupTimeout):
                dep.wait_ready()
        with pytest.raises(docker.errors.NotFound):
            docker.from_env().containers.get(ep.container_id)


class TestOrphans:
    def test_kill_9_leaves_a_record_the_next_run_reclaims(self, tmp_path: Path) -> None:
        """A local server whose tuner died without stopping it (its record left behind) is
        stopped by cleanup, after the identity check; a record whose pid now belongs to another
        process (a recycled pid) is dropped without touching that process."""
        from tuner.deploy import cleanup_stale
        from tuner.deploy._records import RECORD, reclaim_processes

        prof = local_profile()
        trial = tmp_path / "trials" / "0000"
        dep = make_deployer(prof)
        ep = dep.start([], trial)
        dep.wait_ready()
        pid = ep.pids[0]
        record = json.loads((trial / RECORD).read_text())
        assert record["pid"] == pid
        # What a kill -9 of the tuner leaves: the server running, the record on disk.
        proc, dep._proc = dep._proc, None  # type: ignore[attr-defined]  # dropped, not stopped
        assert psutil.pid_exists(pid)
        stopped = cleanup_stale(prof, "s", tmp_path)
        assert stopped == [f"server pid {pid} of 0000"]
        assert not (trial / RECORD).exists()
        assert proc.wait(timeout=10) == 0  # it stopped on the SIGTERM (our child: reap it)
        # A record naming a live process that is not ours: dropped, the process untouched.
        other = tmp_path / "trials" / "0001"
        other.mkdir(parents=True)
        me = psutil.Process()
        fake = {"pid": me.pid, "pgid": os.getpgid(me.pid), "create_time": me.create_time() - 5,
                "argv": ["python", "-m", "vllm"]}  # fmt: skip
        (other / RECORD).write_text(json.dumps(fake))
        assert reclaim_processes(tmp_path) == []
        assert not (other / RECORD).exists()
        dep.stop()

    def test_a_clean_stop_drops_the_record(self, tmp_path: Path) -> None:
        from tuner.deploy._records import RECORD

        with make_deployer(local_profile()) as dep:
            dep.start([], tmp_path / "t")
            dep.wait_ready()
            assert (tmp_path / "t" / RECORD).exists()
        assert not (tmp_path / "t" / RECORD).exists()


def test_a_new_kind_is_one_class_one_model_one_registry_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deployer kind nothing else has heard of (a class, a config model, a registry entry;
    in the product also one line in the profile's union, which model_construct stands in for
    here) runs a search, validation and the report, and answers every capability question
    with the base defaults: nothing outside tuner/deploy/ asks which kind it holds."""
    from typing import Literal

    from tuner.config import load_objective, load_space
    from tuner.config.profile import FakeConfig, Profile
    from tuner.deploy import DEPLOYERS, confine, deployment_hints, fixed_params, keep, plan_slots
    from tuner.deploy.fake import FakeDeployer
    from tuner.errors import ConfigError
    from tuner.report import write_report
    from tuner.study import (
        RunSettings,
        StudyPaths,
        StudyRunner,
        ValidationSettings,
        Validator,
        load_study,
    )
    from tuner.testing import FAST_WORKLOAD
    from tuner.types import WorkerSlot

    class EchoConfig(FakeConfig):
        kind: Literal["echo"] = "echo"  # type: ignore[assignment]

    class EchoDeployer(FakeDeployer):
        kind = "echo"
        config_type = EchoConfig

    monkeypatch.setitem(DEPLOYERS, "echo", EchoDeployer)
    base = fake_profile()
    prof = Profile.model_construct(name="echo", description="", server=base.server,
                                   deployer=EchoConfig(), objective=None)  # fmt: skip
    space = load_space(ROOT / "search_spaces" / "seed_192.yaml")
    objective = load_objective(ROOT / "objectives" / "agent_multiturn.yaml")
    objective = objective.model_copy(update={"workload": FAST_WORKLOAD, "criteria": None})
    paths = StudyPaths.create("echo", tmp_path)
    result = StudyRunner(paths=paths, space=space, seeds=(), objective=objective, profile=prof,
                         settings=RunSettings(n_trials=3, sampler_seed=0)).run()  # fmt: skip
    assert result.deployed == 3
    v = Validator(paths=paths, space=space, objective=objective, profile=prof,
                  settings=ValidationSettings(top=2, rounds=1, extra=0)).run()  # fmt: skip
    assert v.done == v.planned == 2
    assert "report_md" in write_report(load_study(paths), paths.root)
    assert confine(prof, WorkerSlot(1, ("3",))) is prof
    assert [s.index for s in plan_slots(2, None, prof)] == [0, 1]
    assert deployment_hints(prof)["image"] == "vllm/vllm-openai:latest"
    assert fixed_params(prof, space) is None
    with pytest.raises(ConfigError, match="--keep-best needs a compose profile"):
        keep(prof, None, (), "")
