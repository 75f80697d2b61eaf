"""Values that several layers share: where a started server answers, and the process's one TLS
context for HTTP clients (why a trial failed is ``tuner.errors.Reason``).

``deploy`` produces an :class:`Endpoint`, ``measure`` consumes one, and neither imports the
other: they meet in ``tuner.study`` through this module, which imports nothing of the tuner.
"""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass

import httpx

__all__ = ["Endpoint", "WorkerSlot", "tls_context"]


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


@dataclass(frozen=True, slots=True)
class WorkerSlot:
    """What worker ``index`` of ``--workers N --gpus ...`` owns: its GPUs (None: the profile's
    own) and its port offset. A deployer confines a profile to it (``tuner.deploy.confine``).

    Example:
        >>> WorkerSlot(1, ("2", "3")).label()
        'worker 1 GPUs 2,3'
    """

    index: int
    gpus: tuple[str, ...] | None = None

    def label(self) -> str:
        """The slot as the CLI names it."""
        gpus = f" GPUs {','.join(self.gpus)}" if self.gpus else ""
        return f"worker {self.index}{gpus}"


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx's default TLS context, built once per process. httpx builds a new one for every
    client (loading the CA bundle, about 25 ms), and a study opens clients per deployment."""
    return httpx.create_ssl_context()
