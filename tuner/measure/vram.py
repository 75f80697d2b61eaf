"""Server memory: NVML per-process GPU memory (per GPU and in total) when a GPU is present;
else RSS + KV cache."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import psutil

__all__ = ["GpuRow", "MemoryReading", "gpu_reading", "machine", "read_memory"]

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class MemoryReading:
    """The server's memory, and where the number came from (``source``)."""

    vram_mib: float  # the objective value
    source: str  # "nvml", "nvml-device", "rss+kv", "kv-only", "reported" or "unavailable"
    gpu_mib: float | None = None
    rss_mib: float | None = None
    kv_cache_mib: float | None = None
    # GPU index -> MiB, for every GPU the server uses (2 entries under tensor parallel size 2)
    per_gpu_mib: dict[str, float] | None = None

    @property
    def max_gpu_mib(self) -> float | None:
        """The busiest GPU's memory: the budget that binds when every GPU has the same size."""
        return max(self.per_gpu_mib.values()) if self.per_gpu_mib else None

    def as_dict(self) -> dict[str, Any]:
        """The reading as plain data, for measurements.json."""
        return asdict(self)


def _process_tree(pids: Iterable[int]) -> list[psutil.Process]:
    """The processes of ``pids`` and all their descendants (those that still exist)."""
    procs: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for p in [root, *root.children(recursive=True)]:
                procs[p.pid] = p
        except psutil.Error:
            continue
    return list(procs.values())


@dataclass(frozen=True, slots=True)
class GpuRow:
    """One GPU as NVML sees it: the server's processes' memory on it, the device's used memory,
    and whether NVML lists any process there (in a container it often lists none)."""

    index: int
    server_mib: float
    used_mib: float
    server_listed: bool
    any_listed: bool


def _nvml_rows(pids: set[int]) -> list[GpuRow] | None:
    """Every GPU's row, or None without NVML (no driver, no GPU: the CPU path applies)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        rows = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
            mine = [p for p in procs if p.pid in pids and p.usedGpuMemory is not None]
            used = float(pynvml.nvmlDeviceGetMemoryInfo(handle).used) / MIB
            rows.append(
                GpuRow(i, sum(p.usedGpuMemory for p in mine) / MIB, used, bool(mine), bool(procs))
            )
        return rows
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def machine() -> str:
    """The accelerators this host measures on, for telling whether two studies' figures
    compare: the GPUs' names and count from NVML (``2 x NVIDIA H200``), else ``cpu``."""
    try:
        import pynvml
    except ImportError:
        return "cpu"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return "cpu"
    try:
        names = [
            str(pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i)))
            for i in range(pynvml.nvmlDeviceGetCount())
        ]
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()
    return ", ".join(f"{names.count(n)} x {n}" for n in sorted(set(names))) or "cpu"


def gpu_reading(rows: list[GpuRow], kv_mib: float | None) -> MemoryReading | None:
    """The server's GPU memory from NVML's rows, per GPU and in total; None when it holds none.

    Per process when NVML lists the server's processes (its workers: one per GPU under tensor
    parallelism); else the used memory of the GPUs that list no process at all (another PID
    namespace), the best figure there, which also counts other tenants of those GPUs."""
    per_gpu = {str(r.index): r.server_mib for r in rows if r.server_listed and r.server_mib > 0}
    source = "nvml"
    if not per_gpu:
        per_gpu = {str(r.index): r.used_mib for r in rows if not r.any_listed and r.used_mib > 0}
        source = "nvml-device"
    if not per_gpu:
        return None
    total = sum(per_gpu.values())
    return MemoryReading(
        vram_mib=total, source=source, gpu_mib=total, kv_cache_mib=kv_mib, per_gpu_mib=per_gpu
    )


def read_memory(pids: Iterable[int], kv_cache_bytes: float | None) -> MemoryReading:
    """Memory attributable to the server processes ``pids`` and their children."""
    procs = _process_tree(pids)
    tree = {p.pid for p in procs}
    kv_mib = kv_cache_bytes / MIB if kv_cache_bytes is not None else None
    rows = _nvml_rows(tree) if tree else None
    gpu = gpu_reading(rows, kv_mib) if rows else None
    if gpu is not None:
        return gpu
    rss = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            rss += p.memory_info().rss / MIB
    if not procs:
        return MemoryReading(
            vram_mib=kv_mib or 0.0,
            source="kv-only" if kv_mib else "unavailable",
            kv_cache_mib=kv_mib,
        )
    # CPU backend: weights and activations are in RSS; the KV cache vLLM reports is reserved
    # memory that RSS only shows once touched, so it is added explicitly.
    return MemoryReading(
        vram_mib=rss + (kv_mib or 0.0), source="rss+kv", rss_mib=rss, kv_cache_mib=kv_mib
    )
