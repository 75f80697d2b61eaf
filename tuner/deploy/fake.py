"""``fake`` deployer: a simulated server per trial, its latency modelled from the flags.

For tests, demos and dry runs of the whole loop in seconds. Failures are scripted in the
profile: ``crash_when`` / ``oom_when`` / ``hang_when`` / ``error_when`` match flags, and
``flaky_crashes`` makes the first N starts of a study crash whatever the flags, ``env_faults``
meet a broken environment (a taken port, a full disk). The start count
lives in the study's trial folder (``trials/.fake-starts``), not in the process, so it spans
deployer instances and survives a resume.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from tuner.config.profile import FakeConfig, Profile
from tuner.config.rules import parse_flags
from tuner.deploy.base import InProcessDeployer, wait_healthy
from tuner.errors import EnvironmentFault, ServerExited, StartupTimeout
from tuner.schema import TrialFolder, write_json
from tuner.simulate import ModelEngine, ServerModel, SimulatedServer, WallClock
from tuner.types import Endpoint

__all__ = ["FakeDeployer", "fake_starts", "matches"]


def matches(
    flags: Mapping[str, str | None], conditions: Sequence[Mapping[str, str | None]]
) -> bool:
    """True when every key/value of any one condition is in ``flags``."""
    return any(all(k in flags and flags[k] == v for k, v in cond.items()) for cond in conditions)


_COUNTER = ".fake-starts"


def fake_starts(trials_dir: Path) -> int:
    """How many servers the fake deployer started for the trial folders under ``trials_dir``."""
    counter = trials_dir / _COUNTER
    return int(counter.read_text()) if counter.exists() else 0


def _count_start(workdir: Path) -> int:
    """This study's start count, incremented (kept next to the trial folders).

    Several workers (processes, or threads in tests) start servers at once: the increment
    holds a lock, and the new count replaces the file whole, so a reader never sees it empty.
    """
    counter = workdir.parent / _COUNTER
    with (workdir.parent / f"{_COUNTER}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        n = fake_starts(workdir.parent) + 1
        tmp = counter.with_name(f"{_COUNTER}.{os.getpid()}.tmp")
        tmp.write_text(str(n))
        tmp.replace(counter)
    return n


class FakeDeployer(InProcessDeployer):
    """A :class:`~tuner.simulate.SimulatedServer` with a :class:`~tuner.simulate.ModelEngine`."""

    kind = "fake"
    config_type = FakeConfig

    @classmethod
    def build(cls, profile: Profile) -> str | None:
        """The simulated engine and its model of the flags' cost."""
        cfg: FakeConfig = cls._config_of(profile)
        return "simulated " + cfg.model_dump_json(include={"base_ms", "per_token_ms", "decode_ms",
                                                           "per_seq_ms", "kv_tokens"})  # fmt: skip

    def __init__(self, profile: Profile, managed_flags: Collection[str] = ()) -> None:
        """A deployer of simulated servers; ``clock`` is the wall clock unless a test puts a
        virtual one there."""
        self._profile = profile
        self._cfg: FakeConfig = self._config_of(profile)
        self._server: SimulatedServer | None = None
        self._failure: str | None = None
        self._log_path: Path | None = None
        self.clock = WallClock()  # tests may put a VirtualClock here

    def start(
        self, flags: Sequence[str], workdir: Path, env: Mapping[str, str] | None = None
    ) -> Endpoint:
        """Start a simulated server for the flags, or the failure the profile scripts for them
        (crash, OOM, hang, HTTP errors, a broken environment), counting the start in the study's
        folder."""
        self.stop()
        folder = TrialFolder(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        args = [*self._profile.server.to_args(), *flags]
        write_json(folder.command, {"argv": ["fake-vllm", *args], "env": []})
        f = parse_flags(args)
        starts = _count_start(workdir)
        if starts <= self._cfg.env_faults:
            if self._cfg.env_fault == "disk":
                raise OSError(errno.ENOSPC, "No space left on device (fake)", str(workdir))
            raise EnvironmentFault("port 8000 is already in use (fake): nothing was started")
        self._log_path = folder.server_log
        log = [f"fake vLLM starting with {' '.join(args)}"]
        self._failure = None
        if starts <= self._cfg.flaky_crashes or matches(f, self._cfg.crash_when):
            self._failure = "crash"
            log.append("RuntimeError: engine core died unexpectedly (fake)")
        elif matches(f, self._cfg.oom_when):
            self._failure = "oom"
            log.append(
                "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB (fake)"
            )
        elif matches(f, self._cfg.hang_when):
            self._failure = "hang"
        self._log_path.write_text("\n".join(log) + "\n")
        cfg = self._cfg
        engine = ModelEngine(
            args,
            ServerModel(
                cfg.base_ms, cfg.per_token_ms, cfg.decode_ms, cfg.per_seq_ms, cfg.kv_tokens
            ),
            name=self._profile.server.model_name,
            fail_chat=matches(f, cfg.error_when),
        )
        self._server = SimulatedServer(engine, clock=self.clock)
        return Endpoint(base_url=self._server.base_url, model=self._profile.server.model_name)

    def wait_ready(self) -> float:
        """The profile's start-up time on the deployer's clock, then the scripted failure if there
        is one."""
        if self._server is None:
            raise ServerExited("server was not started", reason="crash")
        self.clock.sleep(self._cfg.startup_s)
        if self._failure in ("crash", "oom"):
            raise ServerExited(
                f"server exited with status 1 ({self._failure})",
                reason=self._failure,
                log_tail=self.log_tail(),
            )
        if self._failure == "hang":
            self.clock.sleep(self._cfg.health_timeout_s)
            raise StartupTimeout(f"server not healthy after {self._cfg.health_timeout_s:.0f} s")
        return self._cfg.startup_s + wait_healthy(
            self._server.base_url, timeout_s=self._cfg.health_timeout_s, alive=lambda: None
        )
