"""The deployer seam: start vLLM with some flags, wait until healthy, give an Endpoint, stop.

``deploy`` knows nothing of Optuna or measurements; ``measure`` knows nothing of how the server
was started. They meet in ``tuner.study.runner`` through an :class:`Endpoint`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import httpx
from pydantic import BaseModel

from tuner.config.profile import DEFAULT_DEPLOYMENT, Profile
from tuner.config.space import ParamValue, SearchSpace
from tuner.deploy._identity import check_port_free, free_port
from tuner.errors import ConfigError, DeployError, StartupTimeout
from tuner.types import Endpoint, WorkerSlot, tls_context

__all__ = [
    "BaseDeployer",
    "Deployer",
    "DeployerClass",
    "Endpoint",
    "InProcessDeployer",
    "classify_exit",
    "exit_cause",
    "exited_message",
    "confined",
    "said",
    "tail",
    "wait_healthy",
]


@runtime_checkable
class Deployer(Protocol):
    """Starts one server at a time. Used as a context manager, it always releases what it started.

    Example:
        >>> with make_deployer(profile) as dep:  # doctest: +SKIP
        ...     endpoint = dep.start(flags, trial_dir)
        ...     startup_s = dep.wait_ready()
    """

    @property
    def kind(self) -> str:
        """The YAML ``deployer.kind`` this implementation answers to."""
        ...

    def start(
        self, flags: Sequence[str], workdir: Path, env: Mapping[str, str] | None = None
    ) -> Endpoint:
        """Start the server with the profile's fixed args plus ``flags`` and extra ``env``
        (environment-variable dimensions of the space); logs go to ``workdir``."""
        ...

    def wait_ready(self) -> float:
        """Block until healthy; return start-up seconds. Raises StartupTimeout / ServerExited."""
        ...

    def log_tail(self, lines: int = 40) -> str:
        """Last lines of the server log (for failed trials)."""
        ...

    def check_alive(self) -> None:
        """Raise ServerExited if the server died since it became healthy."""
        ...

    def stop(self) -> None:
        """Stop what ``start`` started (idempotent)."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


_OOM = re.compile(
    r"out of memory|OutOfMemoryError|CUDA error: out of memory|Cannot allocate memory|"
    r"No available memory for the cache blocks|insufficient memory|MemoryError|"
    r"not enough (?:GPU |KV cache )?memory|larger than the available KV cache memory|OOMKilled|"
    r"less than requested memory for kv|is less than desired GPU memory utilization",
    re.IGNORECASE,
)
_INVALID = re.compile(
    r"validation error for \w+Config|unrecognized arguments|invalid choice|"
    r"error: argument --|is not supported|ValueError: .*must be",
)


_CAUSE = re.compile(r"\b([A-Z]\w*(?:Error|Exception)): (.+)$")
# vLLM's API server re-raises the engine's failure as these: the cause is logged before them
_WRAPPER = re.compile(r"root cause|initialization failed|Failed core proc")


def exit_cause(log: str, limit: int = 400) -> str | None:
    """The error that ended a server, in one line from its log: the last ``XError: message``
    that is not a wrapper of an earlier one (a pydantic validation error with its first
    detail line). None when the log names none."""
    lines = log.splitlines()
    found = [
        (i, m) for i, line in enumerate(lines)
        if (m := _CAUSE.search(line)) and not _WRAPPER.search(line)
    ]  # fmt: skip
    if not found:
        return None
    i, m = found[-1]
    cause = f"{m.group(1)}: {m.group(2).strip()}"
    if m.group(1) == "ValidationError" and i + 1 < len(lines):
        cause += f": {lines[i + 1].strip().split(' [type=')[0]}"
    return cause if len(cause) <= limit else cause[: limit - 3] + "..."


def exited_message(what: str, returncode: int | None, reason: str, log: str) -> str:
    """``what exited with status N (reason)``, then the error the log names, if any."""
    cause = exit_cause(log)
    return f"{what} exited with status {returncode} ({reason})" + (f": {cause}" if cause else "")


def classify_exit(returncode: int | None, log: str) -> str:
    """crash / oom / invalid for a server that exited, from its status and log."""
    # SIGKILL (-9 from Popen, 137 from a shell or container) is how the kernel OOM killer ends it.
    if returncode in (-9, 137) or _OOM.search(log):
        return "oom"
    if _INVALID.search(log):
        return "invalid"
    return "crash"


def tail(text: str, lines: int = 40) -> str:
    """The last ``lines`` lines of ``text``."""
    return "\n".join(text.splitlines()[-lines:])


def wait_healthy(
    base_url: str,
    *,
    timeout_s: float,
    alive: Callable[[], None],
    client: httpx.Client | None = None,
    interval_s: float = 0.5,
) -> float:
    """Poll ``/health`` until 200; ``alive()`` raises ServerExited if the server died meanwhile.

    Returns the seconds it took. Raises StartupTimeout after ``timeout_s``.
    """
    t0 = time.perf_counter()
    own = client is None
    http = client or httpx.Client(timeout=5.0, verify=tls_context())
    try:
        while True:
            alive()
            try:
                if http.get(f"{base_url}/health").status_code == 200:
                    return time.perf_counter() - t0
            except httpx.HTTPError:
                pass  # not listening yet
            if time.perf_counter() - t0 > timeout_s:
                raise StartupTimeout(f"server not healthy after {timeout_s:.0f} s")
            time.sleep(interval_s)
    finally:
        if own:
            http.close()


class DeployerClass(Protocol):
    """A deployer implementation as the registry holds it: the class itself.

    Called with the profile (and the flags the search space manages) it gives a Deployer. The
    class answers every question the rest of the tuner has about its kind, so that nothing
    outside ``tuner.deploy`` asks which kind it holds (``BaseDeployer`` has the defaults).
    """

    @property
    def kind(self) -> str:
        """The YAML ``deployer.kind`` the class answers to."""
        ...

    @property
    def config_type(self) -> type[BaseModel]:
        """The kind's config model in ``tuner.config.profile``."""
        ...

    def __call__(self, profile: Profile, managed_flags: Collection[str] = ()) -> Deployer: ...

    @property
    def one_server(self) -> bool:
        """Whether the kind tunes a server that exists once (no several workers)."""
        ...

    def cleanup_stale(
        self, profile: Profile, study: str, root: Path | None = None, keep: Collection[Path] = ()
    ) -> list[str]:
        """What a hard-killed earlier run of ``study`` left behind, removed; never the trials
        in ``keep``."""
        ...

    def reclaim(
        self, roots: Sequence[Path], study: str | None, profile: Profile | None
    ) -> list[str]:
        """``tuner cleanup``: what killed runs of the studies in ``roots`` left running,
        stopped; a line each."""
        ...

    def hand_back(self, profile: Profile) -> list[str]:
        """The user's server as it was before the study; what was done."""
        ...

    def describe(self, profile: Profile) -> str:
        """What the profile deploys, in words."""
        ...

    def fixed_params(self, profile: Profile, space: SearchSpace) -> dict[str, ParamValue] | None:
        """The one configuration a kind that cannot change flags measures, else None."""
        ...

    def confine(self, profile: Profile, slot: WorkerSlot) -> Profile:
        """The profile confined to one worker's GPUs and port."""
        ...

    def hints(self, profile: Profile) -> dict[str, Any]:
        """What the recommendation's command lines need from the profile."""
        ...

    def check(self, profile: Profile, space: SearchSpace) -> None:
        """ConfigError before any deployment when the profile cannot serve the space."""
        ...

    def keep(
        self, profile: Profile, flags: Sequence[str] | None, managed: Collection[str], why: str
    ) -> str:
        """``--keep-best``: leave the user's server running the flags; a line saying so."""
        ...

    def build(self, profile: Profile) -> str | None:
        """What serves the trials, as far as it decides whether two studies' measurements
        compare (the vLLM version, the image); None: not known before a deployment."""
        ...


class BaseDeployer:
    """Context-manager plumbing shared by the implementations.

    Subclasses set ``kind`` (the YAML ``deployer.kind``) and ``config_type`` (its pydantic
    model in ``tuner.config.profile``); the registry in ``tuner.deploy`` is keyed by ``kind``.
    """

    kind: ClassVar[str] = "base"
    config_type: ClassVar[type[BaseModel]] = BaseModel
    # It tunes a server that exists once (the user's compose service, a running server):
    # several workers would fight over it.
    one_server: ClassVar[bool] = False

    @classmethod
    def _config_of(cls, profile: Profile) -> Any:
        """The profile's deployer section, checked to be this class's config type."""
        if not isinstance(profile.deployer, cls.config_type):
            raise TypeError(
                f"{cls.__name__} needs a {cls.kind} profile, got {profile.deployer.kind}"
            )
        return profile.deployer

    @classmethod
    def cleanup_stale(
        cls, profile: Profile, study: str, root: Path | None = None, keep: Collection[Path] = ()
    ) -> list[str]:
        """Remove what a hard-killed earlier run of ``study`` (folder ``root``) left; what was
        removed. ``keep``: trial folders whose trials run now (other workers'): never touched.

        Nothing by default: most kinds start nothing that outlives the tuner.
        """
        return []

    @classmethod
    def hand_back(cls, profile: Profile) -> list[str]:
        """At the end of a study (finished, failed or interrupted): give the user's server back
        in the state it was in before the study; what was done. Nothing by default: only a
        deployer that takes over a running service (compose) has anything to give back."""
        return []

    @classmethod
    def reclaim(
        cls, roots: Sequence[Path], study: str | None, profile: Profile | None
    ) -> list[str]:
        """``tuner cleanup``: what hard-killed runs of the studies in ``roots`` (only
        ``study``'s, when given) left running, stopped; one line per thing. ``profile``: the
        study's, where known (the engine it ran on). Nothing by default."""
        return []

    @classmethod
    def describe(cls, profile: Profile) -> str:
        """What the profile deploys, in words (for messages)."""
        return f"the {cls.kind} deployer"

    @classmethod
    def fixed_params(cls, profile: Profile, space: SearchSpace) -> dict[str, ParamValue] | None:
        """The one configuration a deployer that cannot change flags measures (a running
        server's); None: it deploys whatever the study proposes."""
        return None

    @classmethod
    def confine(cls, profile: Profile, slot: WorkerSlot) -> Profile:
        """``profile`` confined to one worker's GPUs and port; unchanged by default (a
        simulated server uses no GPU and takes a free port)."""
        return profile

    @classmethod
    def hints(cls, profile: Profile) -> dict[str, Any]:
        """What the recommendation's command lines need from the profile (image, GPUs, port,
        volumes, the names of the variables to pass), as plain data stored with the study."""
        return dict(DEFAULT_DEPLOYMENT)

    @classmethod
    def check(cls, profile: Profile, space: SearchSpace) -> None:
        """ConfigError, before any deployment, when the profile cannot serve ``space``."""

    @classmethod
    def build(cls, profile: Profile) -> str | None:
        """What serves the trials (vLLM's version, the image), for a study's measurements to
        be reused by another (``--warm-start``); None by default: unknown, never reused."""
        return None

    @classmethod
    def keep(
        cls, profile: Profile, flags: Sequence[str] | None, managed: Collection[str], why: str
    ) -> str:
        """``--keep-best``: leave the user's server running ``flags`` (None: only check that
        this kind can); what was done, in a line. Only a deployer that tunes the user's own
        service can (compose)."""
        raise ConfigError(
            f"--keep-best needs a compose profile (deployer.kind: compose), not {cls.kind}",
            key="deployer.kind",
        )

    def stop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _begin(self, workdir: Path, host: str, port: int) -> int:
        """Before a start: stop what runs, make the trial folder, choose the port (the fixed
        one, checked free: another process on it is the machine's fault; or a free one)."""
        self.stop()
        workdir.mkdir(parents=True, exist_ok=True)
        if port:
            check_port_free(host, port)
        return port or free_port(host)

    @staticmethod
    def _write_command(workdir: Path, record: Mapping[str, Any]) -> None:
        """``command.json``: how the server was started. Environment variables by name only:
        values (HF_TOKEN...) never reach disk or logs."""
        (workdir / "command.json").write_text(json.dumps(record, indent=2))

    _log_path: Path | None = None  # the server log of the current trial, where there is one

    def _read_log(self) -> str:
        """The current trial's server log, as text (empty before a start)."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_bytes().decode("utf-8", errors="replace")

    def _alive(self) -> None:
        """Raise ServerExited if the server died; nothing to check by default."""

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` of the server log."""
        return tail(self._read_log(), lines)

    def check_alive(self) -> None:
        """ServerExited when the server died since it became healthy."""
        self._alive()

    def _wait_with_log(self, base_url: str, timeout_s: float, alive: Callable[[], None]) -> float:
        """wait_healthy, with the server log's tail attached to any failure."""
        try:
            return wait_healthy(base_url, timeout_s=timeout_s, alive=alive)
        except DeployError as exc:
            if not exc.log_tail:
                exc.log_tail = tail(self._read_log())
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop what was started, whatever ended the block."""
        self.stop()


def confined(
    profile: Profile,
    cfg: BaseModel,
    slot: WorkerSlot,
    devices: Callable[[tuple[str, ...]], dict[str, object]],
) -> Profile:
    """``profile`` confined to ``slot``: ``devices(gpus)`` says how the deployer's config names
    the slot's GPUs (when it has any), and a fixed ``port`` becomes port + the slot's index so
    that workers on one host never share one. Unchanged when there is nothing to confine."""
    update = devices(slot.gpus) if slot.gpus is not None else {}
    port = int(getattr(cfg, "port", 0) or 0)
    if port:
        update["port"] = port + slot.index
    if not update:
        return profile
    return profile.model_copy(update={"deployer": cfg.model_copy(update=update)})


def said(verb: str, what: str, items: Sequence[str]) -> str:
    """A line for ``tuner cleanup``: ``stopped 2 server(s): a, b``."""
    return f"{verb} {len(items)} {what}(s)" + (f": {', '.join(items)}" if items else "")


class InProcessDeployer(BaseDeployer):
    """A simulated server in this process (fake, replay): nothing outlives ``stop``."""

    _server: Any = None  # an object with close()

    def stop(self) -> None:
        """Close the simulated server (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
