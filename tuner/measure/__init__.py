"""Measurement: the multi-turn agent workload over httpx streaming, /metrics deltas, memory."""

from __future__ import annotations

from tuner.measure._result import RequestSample, TrialMeasurement
from tuner.measure._run import measure, measure_async
from tuner.measure.client import ChatTiming, stream_chat
from tuner.measure.metrics import MetricsSnapshot, fetch_metrics, parse_metrics
from tuner.measure.stats import Summary, percentile, summarize
from tuner.measure.vram import MemoryReading, read_memory
from tuner.measure.workload import AgentWorkload

__all__ = [
    "AgentWorkload",
    "ChatTiming",
    "MemoryReading",
    "MetricsSnapshot",
    "RequestSample",
    "Summary",
    "TrialMeasurement",
    "fetch_metrics",
    "measure",
    "measure_async",
    "parse_metrics",
    "percentile",
    "read_memory",
    "stream_chat",
    "summarize",
]
