"""The one exception tree of vllm-tuner.

Lower-layer errors (httpx, subprocess, YAML, pydantic, OS) are converted where they enter,
with ``raise ... from exc``, so callers only need to know this tree::

    TunerError
     ├── ConfigError          bad YAML or value; names file, line and key
     ├── StudyError           storage / study state that cannot be used
     ├── EnvironmentFault     the machine, not the configuration: port taken, name conflict,
     │                        engine unreachable, disk full (reason = "env"; stops the study,
     │                        the trial is retried on resume and never counts against a point)
     ├── DeployError          the server could not be brought up (has a failure ``reason``)
     │    ├── StartupTimeout  not healthy within the timeout     reason = Reason.TIMEOUT
     │    └── ServerExited    the process or container died       reason = crash | oom | invalid
     └── MeasureError         the workload could not be measured  reason = request_error |
                                                                   hang | overload

Deploy and measure errors become failed trials (failure is data); the others propagate. Every
way a trial can end without a measurement is one member of :class:`Reason`.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

__all__ = [
    "ConfigError",
    "DeployError",
    "EnvironmentFault",
    "MeasureError",
    "Reason",
    "ServerExited",
    "StartupTimeout",
    "StudyError",
    "TunerError",
]


class Reason(StrEnum):
    """Why a trial ended without a measurement: its ``reason`` user attribute.

    A reason answers two questions for everything that reads a study: is it the configuration's
    own failure (the report lists it under failed trials, the point is never tried again), or
    did the trial say nothing about its point (it is retried, and never shown as a failure)?

    Example:
        >>> Reason.OOM.is_failure, Reason.INTERRUPTED.is_failure
        (True, False)
    """

    INVALID = "invalid"  # vLLM refuses the flags (found before deploying, or at start-up)
    CRASH = "crash"  # the server exited
    OOM = "oom"  # out of memory (exit status or log pattern)
    TIMEOUT = "timeout"  # not healthy within the deployer's timeout
    REQUEST_ERROR = "request_error"  # the workload failed against a healthy server
    HANG = "hang"  # no token for the stall timeout while /health answered (a known vLLM failure)
    OVERLOAD = "overload"  # more requests failed than the workload allows at its load
    INTERRUPTED = "interrupted"  # Ctrl-C / SIGTERM, or its worker died: the point is retried
    ENV = "env"  # the machine failed (port taken, engine unreachable, disk full): retried
    DUPLICATE = "duplicate"  # a sampler proposed a point the study measured: not redeployed

    @property
    def is_failure(self) -> bool:
        """The configuration failed: the outcome is known and is shown as a failure."""
        return self not in (Reason.INTERRUPTED, Reason.ENV, Reason.DUPLICATE)

    @classmethod
    def of(cls, text: object) -> Reason | None:
        """The reason stored as ``text``; None for none, or for one this version does not know
        (a study written by an older tuner): such a trial is treated as saying nothing."""
        try:
            return cls(str(text)) if text is not None else None
        except ValueError:
            return None


class TunerError(Exception):
    """Base of every error vllm-tuner raises on purpose."""


class ConfigError(TunerError):
    """A configuration file or value is invalid.

    The message reads ``FILE:LINE: KEY: what is wrong`` where each part is known.
    """

    def __init__(
        self,
        message: str,
        *,
        file: Path | str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        """``message``, located by ``file``, ``line`` and ``key`` where known."""
        self.file = str(file) if file is not None else None
        self.line = line
        self.key = key
        self.detail = message
        where = ""
        if self.file:
            where = self.file if line is None else f"{self.file}:{line}"
        parts = [p for p in (where, key) if p]
        super().__init__(": ".join([*parts, message]))


class StudyError(TunerError):
    """The study (storage, folder, state) cannot be used as asked."""


class EnvironmentFault(TunerError):
    """What failed is the environment, not the configuration being measured.

    A port another process holds, a container name in use, an unreachable Docker Engine or
    server, a full disk: deploying the same flags elsewhere would work, so the point must not
    be recorded as crashed. The study stops with this one line; the trial is marked ``env``
    and retried when the study resumes.
    """

    reason = Reason.ENV


class DeployError(TunerError):
    """The server could not be started or kept alive; ``reason`` classifies why."""

    reason: Reason = Reason.CRASH

    def __init__(self, message: str, *, reason: str | None = None, log_tail: str = "") -> None:
        """``message``; ``reason`` classifies it (a ``Reason`` name), ``log_tail`` is the server
        log's end."""
        super().__init__(message)
        if reason is not None:
            self.reason = Reason(reason)
        self.log_tail = log_tail


class StartupTimeout(DeployError):
    """The server was not healthy within the allowed time."""

    reason = Reason.TIMEOUT


class ServerExited(DeployError):
    """The server process or container exited; ``reason`` is crash, oom or invalid."""


class MeasureError(TunerError):
    """The workload failed against a healthy server; ``reason`` is request_error (HTTP error,
    timeout, bad stream), hang (no token for the stall timeout) or overload (too many failed
    requests at the workload's load)."""

    reason: Reason = Reason.REQUEST_ERROR

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = Reason(reason)
