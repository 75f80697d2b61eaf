"""What the local deployer started, recorded on disk so that a kill -9 leaves no orphan.

When a server starts, ``process.json`` in its trial folder records its pid, process group,
start time and command line; a clean stop removes it. After a hard kill of the tuner the record
stays: the next run of the study (and ``tuner cleanup``) stops that process group, but only
after checking that the pid still belongs to the same process (same start time, same command
line), so a recycled pid is never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Collection
from pathlib import Path

import psutil

__all__ = ["RECORD", "forget", "reclaim_processes", "remember"]

RECORD = "process.json"


def remember(workdir: Path, pid: int, argv: list[str]) -> None:
    """Record the server just started in ``workdir`` (its trial folder)."""
    proc = psutil.Process(pid)
    data = {"pid": pid, "pgid": os.getpgid(pid), "create_time": proc.create_time(), "argv": argv}
    tmp = workdir / (RECORD + ".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(workdir / RECORD)


def forget(workdir: Path) -> None:
    """The server of ``workdir`` was stopped: drop its record."""
    with contextlib.suppress(FileNotFoundError):
        (workdir / RECORD).unlink()


def _same(data: dict[str, object]) -> psutil.Process | None:
    """The running process a record names, if it is still that process (same pid, start time and
    command line); None for a pid that died or was recycled."""
    try:
        proc = psutil.Process(int(str(data["pid"])))
        if abs(proc.create_time() - float(str(data["create_time"]))) > 0.01:
            return None
        return proc if proc.cmdline() == data["argv"] else None
    except (psutil.Error, KeyError, ValueError):
        return None


def _stop_group(pgid: int, grace_s: float) -> None:
    """SIGTERM to a process group, then SIGKILL once ``grace_s`` has passed without it ending."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def reclaim_processes(
    study_root: Path, grace_s: float = 10.0, keep: Collection[Path] = ()
) -> list[str]:
    """Stop every recorded server under ``study_root`` that is still the process recorded;
    drop every record. Trial folders in ``keep`` (trials running now, another worker's) are
    left alone. Returns what was stopped."""
    stopped: list[str] = []
    kept = {p.resolve() for p in keep}
    for record in sorted(study_root.glob(f"**/trials/*/{RECORD}")):
        if record.parent.resolve() in kept:
            continue
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError):
            data = {}
        proc = _same(data) if isinstance(data, dict) else None
        if proc is not None:
            _stop_group(int(str(data["pgid"])), grace_s)
            stopped.append(f"server pid {proc.pid} of {record.parent.name}")
        forget(record.parent)
    return stopped
