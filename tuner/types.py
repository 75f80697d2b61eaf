"""Values that several layers share: where a started server answers, why a trial failed, the
process's one TLS context for HTTP clients.

``deploy`` produces an :class:`Endpoint`, ``measure`` consumes one, and neither imports the
other: they meet in ``tuner.study`` through this module, which imports nothing of the tuner.
"""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass

import httpx

__all__ = ["FAILURE_REASONS", "Endpoint", "tls_context"]

# Every reason a trial can fail with; the report groups failed trials by these.
FAILURE_REASONS = (
    "invalid",  # vLLM refuses the flags (detected before deploying, or at start-up)
    "crash",  # the server exited
    "oom",  # out of memory (exit status or log pattern)
    "timeout",  # not healthy within the deployer's timeout
    "request_error",  # the workload failed against a healthy server
    "hang",  # no token for the stall timeout while /health answered (a known vLLM failure)
    "overload",  # more requests failed than the workload allows at its load
    "interrupted",  # Ctrl-C / SIGTERM during the trial
    "env",  # the environment failed (port taken, engine unreachable, disk full): retried
    "duplicate",  # the sampler proposed an already evaluated point (not deployed)
)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a started server answers, and what to attribute its memory to.

    Attributes:
        base_url: ``http://host:port`` of the OpenAI-compatible server.
        model: the name clients send in requests (``--served-model-name``).
        pids: processes whose memory is the server's (the local deployer's process group).
        container_id: the container running it (docker and compose deployers).
        reported_vram_mib: memory the server reports about itself instead of being measured.
            Only simulated servers set it (the replay deployer serves the memory recorded in
            its surface); real servers leave it ``None`` and measurement reads NVML or RSS.

    Example:
        >>> Endpoint("http://127.0.0.1:8000", "qwen3").reported_vram_mib is None
        True
    """

    base_url: str
    model: str
    pids: tuple[int, ...] = ()
    container_id: str | None = None
    reported_vram_mib: float | None = None


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx's default TLS context, built once per process. httpx builds a new one for every
    client (loading the CA bundle, about 25 ms), and a study opens clients per deployment."""
    return httpx.create_ssl_context()
