"""Run the agent workload against an endpoint and turn it into honest numbers.

Knows nothing of how the server was started: it gets an :class:`~tuner.types.Endpoint`, sends
the workload over httpx streaming, reads ``/metrics`` around every request, and returns a
:class:`TrialMeasurement` whose :meth:`~TrialMeasurement.observations` feed the metric table
(``tuner.metrics``).
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from tuner.config.objective import WorkloadSpec
from tuner.measure.client import stream_chat
from tuner.measure.metrics import MetricsSnapshot, fetch_metrics
from tuner.measure.stats import Summary, summarize
from tuner.measure.vram import MemoryReading, read_memory
from tuner.measure.workload import AgentWorkload
from tuner.metrics import Observations
from tuner.schema import RequestKind, RequestRecord, series_of
from tuner.types import Endpoint

__all__ = ["RequestSample", "TrialMeasurement", "measure", "measure_async"]

Kind = RequestKind
RequestSample = RequestRecord  # one measured request, exactly as measurements.json stores it


def _rate(samples: list[RequestSample]) -> float:
    # With prefix caching off vLLM does no lookups at all: zero queries means zero hits.
    q = sum(s.prefix_queries for s in samples)
    return sum(s.prefix_hits for s in samples) / q if q > 0 else 0.0


def _server_ttft(samples: list[RequestSample]) -> float | None:
    xs = [s.server_ttft_ms for s in samples if s.server_ttft_ms is not None]
    return sum(xs) / len(xs) if xs else None


@dataclass(frozen=True, slots=True)
class TrialMeasurement:
    """Everything measured for one configuration; raw samples included."""

    samples: tuple[RequestSample, ...]
    memory: MemoryReading
    cache_config: dict[str, str] = field(default_factory=dict)
    metrics_available: bool = True
    # why measurement stopped: "fixed" (the workload's count), "precision" (every objective's
    # interval narrow enough), "max_conversations" or "max_seconds" (a cap came first)
    stop_reason: str = "fixed"

    def _of(self, kind: Kind) -> list[RequestSample]:
        return [s for s in self.samples if s.kind == kind]

    @property
    def kv_cache_tokens(self) -> float | None:
        return MetricsSnapshot(cache_config=self.cache_config).kv_cache_tokens

    @property
    def miss(self) -> Summary:
        """Statistics of the first turns' TTFT (ms)."""
        return summarize([s.ttft_ms for s in self._of("miss")])

    @property
    def hit(self) -> Summary:
        """Statistics of the later turns' TTFT (ms)."""
        return summarize([s.ttft_ms for s in self._of("hit")])

    @property
    def speedup(self) -> float:
        """MISS / HIT medians: > 1 means later turns are faster."""
        return self.miss.median / self.hit.median if self.hit.median > 0 else math.nan

    @property
    def gain_pct(self) -> float:
        m = self.miss.median
        return (m - self.hit.median) / m * 100.0 if m > 0 else math.nan

    @property
    def hit_rate_hit(self) -> float | None:
        """Prefix-cache hit rate (tokens) of HIT turns; 0: a speed-up cannot be the cache's."""
        return _rate(self._of("hit")) if self.metrics_available else None

    @property
    def hit_rate_miss(self) -> float | None:
        return _rate(self._of("miss")) if self.metrics_available else None

    @property
    def throughput_tok_s(self) -> float:
        """Median per-request decode rate over the measured requests (tokens/s)."""
        measured = self._of("miss") + self._of("hit")
        xs = [s.decode_tok_s for s in measured if s.decode_tok_s > 0]
        return summarize(xs).median if xs else 0.0

    def observations(self, startup_s: float | None = None) -> Observations:
        """Raw series and single values, by the names ``tuner.metrics.METRICS`` reads."""
        return Observations(
            series=series_of(self.samples),
            scalars={
                "vram_mib": self.memory.vram_mib,
                "speedup": self.speedup,
                "throughput_tok_s": self.throughput_tok_s,
                "startup_s": startup_s,
            },
        )

    def summary(self) -> dict[str, Any]:
        """The numbers ``measurements.json`` keeps under ``summary``."""
        return {
            "ttft_miss_ms": self.miss.as_dict(),
            "ttft_hit_ms": self.hit.as_dict(),
            "speedup": self.speedup,
            "gain_pct": self.gain_pct,
            "hit_rate_hit": self.hit_rate_hit,
            "hit_rate_miss": self.hit_rate_miss,
            "server_ttft_miss_ms": _server_ttft(self._of("miss")),
            "server_ttft_hit_ms": _server_ttft(self._of("hit")),
            "throughput_tok_s": self.throughput_tok_s,
            "memory": self.memory.as_dict(),
            "metrics_available": self.metrics_available,
            "stop_reason": self.stop_reason,
            "conversations": len({x.conversation for x in self._of("miss")}),
        }

    def to_json(self) -> dict[str, Any]:
        """Summary, cache config and every request's sample, as JSON-ready data."""
        return {
            "summary": self.summary(),
            "cache_config": self.cache_config,
            "samples": [asdict(s) for s in self.samples],
        }


async def measure_async(
    endpoint: Endpoint,
    spec: WorkloadSpec,
    client: httpx.AsyncClient,
    *,
    check_alive: Callable[[], None] | None = None,
    on_request: Callable[[RequestSample], None] | None = None,
    enough: Callable[[TrialMeasurement], bool] | None = None,
) -> TrialMeasurement:
    """Warm-up conversation(s), then at least ``spec.conversations`` measured ones.

    Requests are sequential so each /metrics delta belongs to exactly one request. With
    ``enough`` (adaptive measurement), conversations go on until ``enough(measured so far)``
    is true or a cap (``spec.max_conversations``, ``spec.max_seconds``) is reached; the
    measurement's ``stop_reason`` says which.
    """
    workload = AgentWorkload(spec)
    samples: list[RequestSample] = []
    before = await fetch_metrics(client, endpoint.base_url)
    last: MetricsSnapshot = before
    cap = max(spec.conversations, spec.max_conversations or spec.conversations)
    total = spec.warmup_conversations + (cap if enough is not None else spec.conversations)
    started = time.perf_counter()
    stop_reason = "fixed" if enough is None else "max_conversations"
    for conv in range(total):
        salt = uuid.uuid4().hex
        messages = [{"role": "system", "content": workload.system_prompt(salt)}]
        for turn in range(spec.turns):
            messages.append({"role": "user", "content": workload.user_message(conv, turn)})
            timing = await stream_chat(
                client,
                endpoint.base_url,
                endpoint.model,
                messages,
                max_tokens=spec.max_tokens,
                temperature=spec.temperature,
                ignore_eos=spec.ignore_eos,
                timeout_s=spec.request_timeout_s,
            )
            now = await fetch_metrics(client, endpoint.base_url)
            d = now.delta(last)
            last = now
            kind: Kind = (
                "warmup" if conv < spec.warmup_conversations else ("miss" if turn == 0 else "hit")
            )
            sample = RequestSample(
                conversation=conv - spec.warmup_conversations,
                turn=turn,
                kind=kind,
                ttft_ms=timing.ttft_s * 1000.0,
                total_ms=timing.total_s * 1000.0,
                prompt_tokens=timing.prompt_tokens,
                completion_tokens=timing.completion_tokens,
                decode_tok_s=timing.decode_tok_s,
                prefix_queries=d.prefix_queries,
                prefix_hits=d.prefix_hits,
                server_ttft_ms=d.ttft_sum_s / d.ttft_count * 1000.0 if d.ttft_count > 0 else None,
            )
            samples.append(sample)
            if on_request is not None:
                on_request(sample)
            # The agent's history grows with what the model really answered.
            messages.append({"role": "assistant", "content": timing.text})
        if check_alive is not None:
            check_alive()
        measured = conv + 1 - spec.warmup_conversations
        if enough is None or measured < spec.conversations:
            continue
        if enough(_partial(samples, last)):
            stop_reason = "precision"
            break
        if spec.max_seconds is not None and time.perf_counter() - started > spec.max_seconds:
            stop_reason = "max_seconds"
            break
    if endpoint.reported_vram_mib is not None:  # a simulated server reports its own memory
        memory = MemoryReading(vram_mib=endpoint.reported_vram_mib, source="reported")
    else:
        memory = read_memory(endpoint.pids, last.kv_cache_bytes)
    return TrialMeasurement(
        samples=tuple(samples),
        memory=memory,
        cache_config=last.cache_config,
        metrics_available=last.available,
        stop_reason=stop_reason,
    )


def _partial(samples: list[RequestSample], last: MetricsSnapshot) -> TrialMeasurement:
    """What is measured so far, for the adaptive stop (memory is read once, at the end)."""
    return TrialMeasurement(
        samples=tuple(samples),
        memory=MemoryReading(vram_mib=math.nan, source="pending"),
        cache_config=last.cache_config,
        metrics_available=last.available,
    )


def measure(
    endpoint: Endpoint,
    spec: WorkloadSpec,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    check_alive: Callable[[], None] | None = None,
    on_request: Callable[[RequestSample], None] | None = None,
    enough: Callable[[TrialMeasurement], bool] | None = None,
) -> TrialMeasurement:
    """Synchronous entry point: owns its event loop and HTTP client."""

    async def _go() -> TrialMeasurement:
        # trust_env=False: a proxy from the environment must never see loopback traffic.
        async with httpx.AsyncClient(transport=transport, trust_env=False) as client:
            return await measure_async(
                endpoint,
                spec,
                client,
                check_alive=check_alive,
                on_request=on_request,
                enough=enough,
            )

    return asyncio.run(_go())
