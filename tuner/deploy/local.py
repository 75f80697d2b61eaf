"""``local`` deployer: vLLM's OpenAI server as a child process in its own process group."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from tuner.config.profile import DEFAULT_DEPLOYMENT, DEFAULT_PORT, LocalConfig, Profile
from tuner.deploy._identity import check_served_by, free_port
from tuner.deploy._records import forget, reclaim_processes, remember
from tuner.deploy.base import BaseDeployer, classify_exit, confined, exited_message, said, tail
from tuner.errors import DeployError, ServerExited
from tuner.types import Endpoint, WorkerSlot

__all__ = ["LocalDeployer", "free_port"]

# Every live server process group, so an unexpected interpreter exit still stops them.
_LIVE: set[LocalDeployer] = set()


@atexit.register
def _stop_all() -> None:
    """At interpreter exit, stop every server still running."""
    for dep in list(_LIVE):
        dep.stop()


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """SIGINT/SIGTERM received inside the block raise KeyboardInterrupt when it ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if caught:
        raise KeyboardInterrupt


def _resolve_model(model: str) -> str:
    """A relative model folder as an absolute path (the child's working directory may differ)."""
    # A relative local folder (e.g. the generated demo model) must survive the child's cwd.
    p = Path(model)
    return str(p.resolve()) if not p.is_absolute() and p.exists() else model


def keep_bytecode(env: dict[str, str], explicit: Mapping[str, str]) -> dict[str, str]:
    """``env`` without PYTHONDONTWRITEBYTECODE unless the profile or the trial set it.

    Each start of vLLM imports torch, transformers and vLLM in two processes (the API server
    and the engine core). An image that sets PYTHONDONTWRITEBYTECODE, as some GPU images do,
    over a torch installed without bytecode makes every start compile those modules again: on
    an H200 a warm start took 47.1 s so, 31.6 s once the bytecode was cached
    (benchmarks/results/gpu/bytecode.json). The first trial writes it; the others read it.
    """
    if "PYTHONDONTWRITEBYTECODE" in explicit:
        return env
    return {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}


class LocalDeployer(BaseDeployer):
    """Runs ``python -m vllm.entrypoints.openai.api_server`` per trial.

    Stop sends SIGTERM to the whole process group (API server, engine core, workers), then
    SIGKILL after ``stop_timeout_s``.
    """

    kind = "local"
    config_type = LocalConfig

    def __init__(self, profile: Profile, managed_flags: Collection[str] = ()) -> None:
        """A deployer of vLLM's OpenAI server as a child process of the tuner."""
        self._profile = profile
        self._cfg: LocalConfig = self._config_of(profile)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_path: Path | None = None
        self._base_url = ""
        self._port = 0

    def command(self, flags: Sequence[str], port: int) -> list[str]:
        """The exact argv the server is started with."""
        python = self._cfg.python or sys.executable
        server = self._profile.server.model_copy(
            update={"model": _resolve_model(self._profile.server.model)}
        )
        return [
            python,
            "-m",
            self._cfg.module,
            *server.to_args(),
            "--host",
            self._cfg.host,
            "--port",
            str(port),
            *flags,
        ]

    def start(
        self, flags: Sequence[str], workdir: Path, env: Mapping[str, str] | None = None
    ) -> Endpoint:
        """Start the server in its own process group on the chosen port, its output to the trial's
        server.log, its identity recorded so that a kill -9 of the tuner leaves no orphan
        behind."""
        extra_env = dict(env or {})
        port = self._port = self._begin(workdir, self._cfg.host, self._cfg.port)
        argv = self.command(flags, port)
        env = keep_bytecode(
            {**os.environ, **self._cfg.env, **extra_env}, {**self._cfg.env, **extra_env}
        )
        names = sorted(self._cfg.env) + list(self._cfg.pass_env)
        # the tuned values are never secrets
        self._write_command(workdir, {"argv": argv, "env": names, "trial_env": extra_env})
        self._log_path = workdir / "server.log"
        self._log = self._log_path.open("wb")
        # Ctrl-C / SIGTERM inside Popen (after the fork, before it returns) would orphan the
        # server: hold the interrupt until the process is ours to stop.
        with deferred_interrupts():
            try:
                self._proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=self._log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,  # own process group: one killpg stops every worker
                )
            except OSError as exc:
                self._close_log()
                raise DeployError(
                    f"cannot start {argv[0]}: {exc.strerror}", reason="crash"
                ) from exc
            _LIVE.add(self)
            remember(workdir, self._proc.pid, argv)  # so a kill -9 of the tuner leaves no orphan
        host = "127.0.0.1" if self._cfg.host in ("0.0.0.0", "") else self._cfg.host
        self._base_url = f"http://{host}:{port}"
        return Endpoint(
            base_url=self._base_url,
            model=self._profile.server.model_name,
            pids=(self._proc.pid,),
        )

    def _alive(self) -> None:
        """ServerExited when the process has exited, classified from its exit status and log."""
        if self._proc is None:
            raise ServerExited("server was not started", reason="crash")
        rc = self._proc.poll()
        if rc is not None:
            log = self._read_log()
            reason = classify_exit(rc, log)
            raise ServerExited(
                exited_message("server", rc, reason, log), reason=reason, log_tail=tail(log)
            )

    def wait_ready(self) -> float:
        """Seconds until /health answers, then a check that the server answering the port is the
        process we started."""
        took = self._wait_with_log(self._base_url, self._cfg.health_timeout_s, self._alive)
        if self._proc is not None:
            check_served_by(self._port, [self._proc.pid])
        return took

    def _read_log(self) -> str:
        """The server log, our own buffered writes included."""
        if self._log is not None:
            self._log.flush()  # our own handle on the file the server writes
        return super()._read_log()

    def stop(self) -> None:
        """Stop the process group and forget its record (idempotent)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _terminate_group(proc, self._cfg.stop_timeout_s)
            if self._log_path is not None:  # the trial folder, where start() left the record
                forget(self._log_path.parent)
        _LIVE.discard(self)
        self._close_log()

    @classmethod
    def cleanup_stale(
        cls, profile: Profile, study: str, root: Path | None = None, keep: Collection[Path] = ()
    ) -> list[str]:
        """Servers a hard-killed run of the study left running, stopped (identity checked)."""
        cfg: LocalConfig = cls._config_of(profile)
        return reclaim_processes(root, cfg.stop_timeout_s, keep) if root is not None else []

    @classmethod
    def reclaim(
        cls, roots: Sequence[Path], study: str | None, profile: Profile | None
    ) -> list[str]:
        """Servers recorded in the study folders that are still the recorded process, stopped."""
        return [said("stopped", "server", [s for root in roots for s in reclaim_processes(root)])]

    @classmethod
    def confine(cls, profile: Profile, slot: WorkerSlot) -> Profile:
        """The slot's GPUs as ``CUDA_VISIBLE_DEVICES``; a fixed port + the slot's index."""
        cfg: LocalConfig = cls._config_of(profile)
        return confined(profile, cfg, slot, lambda gpus: {
            "env": {**cfg.env, "CUDA_VISIBLE_DEVICES": ",".join(gpus)}})  # fmt: skip

    @classmethod
    def build(cls, profile: Profile) -> str | None:
        """The module run and the vLLM version the profile's interpreter has installed (read
        from its package metadata: no import of vLLM, a fraction of a second)."""
        cfg: LocalConfig = cls._config_of(profile)
        python = cfg.python or sys.executable
        probe = (
            "import importlib.metadata as m\n"
            "try: print(m.version('vllm'))\n"
            "except m.PackageNotFoundError: print('-')"
        )
        try:
            out = subprocess.run([python, "-c", probe], capture_output=True, text=True,
                                 timeout=60, check=True).stdout.strip()  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return None
        return f"{cfg.module} (vllm {out})"

    @classmethod
    def hints(cls, profile: Profile) -> dict[str, Any]:
        """The port and the variables to pass (HF_TOKEN by default)."""
        cfg: LocalConfig = cls._config_of(profile)
        pass_env = list(cfg.pass_env) or ["HF_TOKEN"]
        return {**DEFAULT_DEPLOYMENT, "port": cfg.port or DEFAULT_PORT, "pass_env": pass_env}

    def _close_log(self) -> None:
        """Close our handle on the server log."""
        if self._log is not None:
            self._log.close()
            self._log = None


def _terminate_group(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """Stop a server's whole process group: SIGTERM, then SIGKILL after ``grace_s``, and reap the
    child."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        proc.wait()
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if proc.poll() is not None and not _group_alive(pgid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    proc.wait()


def _group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` is still alive (one we may not signal counts as
    alive)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
