"""The deployer seam: start vLLM with some flags, wait until healthy, give an Endpoint, stop.

``deploy`` knows nothing of Optuna or measurements; ``measure`` knows nothing of how the server
was started. They meet in ``tuner.study.runner`` through an :class:`Endpoint`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import httpx
from pydantic import BaseModel

from tuner.config.profile import Profile
from tuner.errors import DeployError, StartupTimeout
from tuner.types import FAILURE_REASONS, Endpoint, tls_context

__all__ = [
    "FAILURE_REASONS",
    "BaseDeployer",
    "Deployer",
    "DeployerClass",
    "Endpoint",
    "InProcessDeployer",
    "classify_exit",
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

    Called with the profile (and the flags the search space manages) it gives a Deployer;
    ``cleanup_stale`` removes what a hard-killed earlier run of a study left behind;
    ``hand_back`` returns the user's server to its state before the study.
    """

    @property
    def kind(self) -> str: ...

    @property
    def config_type(self) -> type[BaseModel]: ...

    def __call__(self, profile: Profile, managed_flags: Collection[str] = ()) -> Deployer: ...

    def cleanup_stale(
        self, profile: Profile, study: str, root: Path | None = None, keep: Collection[Path] = ()
    ) -> list[str]: ...

    def hand_back(self, profile: Profile) -> list[str]: ...


class BaseDeployer:
    """Context-manager plumbing shared by the implementations.

    Subclasses set ``kind`` (the YAML ``deployer.kind``) and ``config_type`` (its pydantic
    model in ``tuner.config.profile``); the registry in ``tuner.deploy`` is keyed by ``kind``.
    """

    kind: ClassVar[str] = "base"
    config_type: ClassVar[type[BaseModel]] = BaseModel

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

    def stop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    _log_path: Path | None = None  # the server log of the current trial, where there is one

    def _read_log(self) -> str:
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_bytes().decode("utf-8", errors="replace")

    def _alive(self) -> None:
        """Raise ServerExited if the server died; nothing to check by default."""

    def log_tail(self, lines: int = 40) -> str:
        return tail(self._read_log(), lines)

    def check_alive(self) -> None:
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
        self.stop()


class InProcessDeployer(BaseDeployer):
    """A simulated server in this process (fake, replay): nothing outlives ``stop``."""

    _server: Any = None  # an object with close()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
