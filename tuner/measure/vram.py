"""Server memory: NVML per-process GPU memory when a GPU is present; else RSS + KV cache."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import psutil

__all__ = ["MemoryReading", "read_memory"]

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class MemoryReading:
    """The server's memory, and where the number came from (``source``)."""

    vram_mib: float  # the objective value
    source: str  # "nvml", "rss+kv" or "unavailable"
    gpu_mib: float | None = None
    rss_mib: float | None = None
    kv_cache_mib: float | None = None

    def as_dict(self) -> dict[str, float | str | None]:
        return asdict(self)


def _process_tree(pids: Iterable[int]) -> list[psutil.Process]:
    procs: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for p in [root, *root.children(recursive=True)]:
                procs[p.pid] = p
        except psutil.Error:
            continue
    return list(procs.values())


def _nvml_used_mib(pids: set[int]) -> tuple[float, float] | None:
    """(memory of ``pids`` on every GPU, memory used on the GPUs those pids use) in MiB."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None  # no driver / no GPU: the CPU path applies
    try:
        total = device = 0.0
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
            mine = [p for p in procs if p.pid in pids and p.usedGpuMemory is not None]
            total += sum(p.usedGpuMemory for p in mine) / MIB
            if mine or not procs:
                # No process listed at all: in a container NVML often cannot show processes
                # (another PID namespace); the device's used memory is then the best figure.
                device += float(pynvml.nvmlDeviceGetMemoryInfo(handle).used) / MIB
        return total, device
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def read_memory(pids: Iterable[int], kv_cache_bytes: float | None) -> MemoryReading:
    """Memory attributable to the server processes ``pids`` and their children."""
    procs = _process_tree(pids)
    tree = {p.pid for p in procs}
    kv_mib = kv_cache_bytes / MIB if kv_cache_bytes is not None else None
    gpu = _nvml_used_mib(tree) if tree else None
    if gpu is not None and gpu[0] > 0:
        return MemoryReading(vram_mib=gpu[0], source="nvml", gpu_mib=gpu[0], kv_cache_mib=kv_mib)
    if gpu is not None and gpu[1] > 0:
        return MemoryReading(
            vram_mib=gpu[1], source="nvml-device", gpu_mib=gpu[1], kv_cache_mib=kv_mib
        )
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
