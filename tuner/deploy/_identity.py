"""Measure the server you started, and nothing else.

A fixed port that another server already holds must not be mistaken for the trial's server:
vLLM would fail to bind and exit, while ``/health`` on that port keeps answering 200 from the
other one, and its numbers would be recorded for the configuration. Before starting, a fixed
port must be free; once healthy, the listening socket must belong to the started process tree
(local) and ``/v1/models`` must name the served model (every deployer). A mismatch is an
:class:`~tuner.errors.EnvironmentFault`: the machine's fault, not the configuration's.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterable

import httpx
import psutil

from tuner.errors import EnvironmentFault
from tuner.types import tls_context

__all__ = ["check_model", "check_port_free", "check_served_by", "free_port", "port_owner"]


def _listeners(port: int) -> list[int]:
    """Pids with a listening TCP socket on ``port`` (those this user may see)."""
    pids = []
    with contextlib.suppress(psutil.Error, OSError):
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                pids.append(c.pid)
    return pids


def _describe(pid: int) -> str:
    """A process in words for messages: its pid and the start of its command line."""
    try:
        cmd = " ".join(psutil.Process(pid).cmdline())[:120]
    except psutil.Error:
        cmd = "?"
    return f"pid {pid}: {cmd}"


def port_owner(host: str, port: int) -> str | None:
    """Who listens on ``host:port`` (a short description), or None when nobody does."""
    target = "127.0.0.1" if host in ("0.0.0.0", "") else host
    try:
        with socket.create_connection((target, port), timeout=1.0):
            pass
    except OSError:
        return None
    pids = _listeners(port)
    return ", ".join(_describe(p) for p in pids) if pids else "another process"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def check_port_free(host: str, port: int) -> None:
    """Raise EnvironmentFault when the fixed ``port`` is already served."""
    owner = port_owner(host, port)
    if owner is not None:
        raise EnvironmentFault(
            f"port {port} is already in use ({owner}): stop it or choose another "
            "deployer.port; nothing was started"
        )


def check_served_by(port: int, pids: Iterable[int]) -> None:
    """Raise EnvironmentFault unless the socket on ``port`` belongs to ``pids`` or a child."""
    tree: set[int] = set()
    for pid in pids:
        tree.add(pid)
        with contextlib.suppress(psutil.Error):
            tree.update(c.pid for c in psutil.Process(pid).children(recursive=True))
    listeners = _listeners(port)
    if listeners and not tree.intersection(listeners):
        owner = ", ".join(_describe(p) for p in listeners)
        raise EnvironmentFault(
            f"port {port} is answered by another process ({owner}), not by the server this "
            "trial started: its numbers would not be this configuration's"
        )


def check_model(base_url: str, model: str) -> None:
    """Raise EnvironmentFault unless ``/v1/models`` at ``base_url`` lists ``model``."""
    try:
        resp = httpx.get(
            f"{base_url}/v1/models", timeout=10.0, trust_env=False, verify=tls_context()
        )
        ids = [m.get("id") for m in resp.json().get("data", [])]
    except (httpx.HTTPError, ValueError, AttributeError) as exc:
        raise EnvironmentFault(f"{base_url}/v1/models does not answer as vLLM: {exc}") from exc
    if model not in ids:
        raise EnvironmentFault(
            f"the server at {base_url} serves {', '.join(map(str, ids)) or 'no model'}, not "
            f"{model!r}: another server holds that address"
        )
