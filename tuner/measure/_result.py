"""What one trial measured: every request's record, memory, and the numbers derived from them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from tuner.measure.metrics import MetricsSnapshot
from tuner.measure.stats import Summary, summarize
from tuner.measure.vram import MemoryReading
from tuner.metrics import Observations, percentile
from tuner.schema import RequestKind, RequestRecord, series_of

__all__ = ["Kind", "RequestSample", "TrialMeasurement"]

Kind = RequestKind
RequestSample = RequestRecord  # one measured request, exactly as measurements.json stores it


def _rate(samples: list[RequestSample]) -> float:
    """The prefix-cache hit rate over ``samples`` (0 when there was no lookup: prefix caching
    off)."""
    # With prefix caching off vLLM does no lookups at all: zero queries means zero hits.
    q = sum(s.prefix_queries for s in samples)
    return sum(s.prefix_hits for s in samples) / q if q > 0 else 0.0


def _server_ttft(samples: list[RequestSample]) -> float | None:
    """The mean server-side TTFT over ``samples`` that have one."""
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
    concurrency: int = 1
    # /metrics prefix-cache counters over the whole measured phase: the cross-check of the
    # per-request accounting (under load vLLM counts a waiting request's lookup at every step)
    trial_prefix_queries: float = 0.0
    trial_prefix_hits: float = 0.0
    failed_requests: int = 0
    queue_ms: float | None = None  # mean wait before being scheduled (/metrics histogram)
    preemptions: float | None = None  # /metrics delta over the measured phase
    kv_peak: float | None = None  # highest KV-cache usage (0-1) seen while measuring
    tokens_per_word: float | None = None  # the server tokenizer's, when sizes are in tokens
    distinct: int | None = None  # distinct conversations the measured ones cycled over (trace)

    def _of(self, kind: Kind) -> list[RequestSample]:
        """The samples of one request class."""
        return [s for s in self.samples if s.kind == kind]

    def _measured(self) -> list[RequestSample]:
        """Every request but the warm-up's."""
        return [s for s in self.samples if s.kind != "warmup"]

    @property
    def kv_cache_tokens(self) -> float | None:
        """The KV cache's capacity in tokens, from vLLM's cache configuration."""
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
        """How much faster HIT is than MISS, in percent of MISS."""
        m = self.miss.median
        return (m - self.hit.median) / m * 100.0 if m > 0 else math.nan

    @property
    def hit_rate_hit(self) -> float | None:
        """Prefix-cache hit rate (tokens) of HIT turns; 0: a speed-up cannot be the cache's.

        From each request's own usage (cached tokens) when the server reports it, which is
        right at any load and timing; else, when measured one at a time, from each request's
        /metrics delta (under load those deltas mean nothing).
        """
        return self._hit_rate("hit")

    @property
    def hit_rate_miss(self) -> float | None:
        """The first turns' prefix-cache hit rate, as :attr:`hit_rate_hit` reads it."""
        return self._hit_rate("miss")

    def _hit_rate(self, kind: Kind) -> float | None:
        # vLLM leaves prompt_tokens_details out of a request that hit nothing, and out of every
        # request without --enable-prompt-tokens-details: a request reads 0 either way. Only a
        # hit somewhere shows that the server reports its cache per request.
        share = self._cached_share(kind)
        if any((s.cached_tokens or 0) > 0 for s in self._measured()):
            return share
        per_request = any(s.server_ttft_ms is not None for s in self._of(kind))
        if self.metrics_available and (per_request or self.concurrency == 1 and share is None):
            return _rate(self._of(kind))
        return share

    @property
    def throughput_tok_s(self) -> float:
        """Output tokens of the measured requests / wall time from the first sent to the last
        answered (tokens/s); not a per-request rate, which bundled chunks inflate."""
        return self._per_second(sum(s.completion_tokens for s in self._measured()))

    @property
    def requests_s(self) -> float:
        """Measured requests answered / wall time from the first sent to the last answered."""
        return self._per_second(len(self._measured()))

    def _per_second(self, count: float) -> float:
        """``count`` over the measured phase's wall time (first request sent to last answered)."""
        measured = self._measured()
        if not measured:
            return 0.0
        start = min(s.started_s for s in measured)
        end = max(s.started_s + s.total_ms / 1000.0 for s in measured)
        return count / (end - start) if end > start else 0.0

    def _cached_share(self, kind: Kind) -> float | None:
        """Share of one class's prompt tokens the prefix cache held, from each request's own
        usage (None when the server reports no usage)."""
        reqs = [s for s in self._of(kind) if s.cached_tokens is not None]
        prompt = sum(s.prompt_tokens for s in reqs)
        return sum(s.cached_tokens or 0 for s in reqs) / prompt if reqs and prompt else None

    @property
    def cached_share_hit(self) -> float | None:
        """Share of HIT prompt tokens the prefix cache held."""
        return self._cached_share("hit")

    @property
    def cached_share_miss(self) -> float | None:
        """Share of MISS prompt tokens the prefix cache held: what a first turn found cached
        (a shared system prompt), so that MISS means what the report says it means."""
        return self._cached_share("miss")

    @property
    def late_ms(self) -> float | None:
        """On a timetable, the median lateness of the measured requests: how far the server
        (a turn still waits for the one before it) kept them from their scheduled times."""
        late = sorted(s.late_ms for s in self._measured() if s.late_ms is not None)
        return late[len(late) // 2] if late else None

    def _met(self, slos: Mapping[str, tuple[float | None, float | None]]) -> list[RequestSample]:
        """The measured requests that met their class's (TTFT ms, TPOT ms) SLO (a class
        without one always does)."""
        ok = []
        for x in self._measured():
            ttft, tpot = slos.get(x.klass, (None, None))
            mean_itl = sum(x.itl_ms) / len(x.itl_ms) if x.itl_ms else 0.0
            if (ttft is None or x.ttft_ms <= ttft) and (tpot is None or mean_itl <= tpot):
                ok.append(x)
        return ok

    def goodput(self, slos: Mapping[str, tuple[float | None, float | None]]) -> float | None:
        """Share of measured requests meeting their class's (TTFT ms, TPOT ms) SLO; None
        without SLOs. A class without an SLO always meets it."""
        if not slos:
            return None
        measured = self._measured()
        return len(self._met(slos)) / len(measured) if measured else None

    def good_tok_s(self, slos: Mapping[str, tuple[float | None, float | None]]) -> float:
        """Output tokens per second of the requests that met their SLOs, over the measured
        phase's wall time (every request's without SLOs)."""
        return self._per_second(sum(s.completion_tokens for s in self._met(slos)))

    def observations(
        self,
        startup_s: float | None = None,
        slos: Mapping[str, tuple[float | None, float | None]] | None = None,
    ) -> Observations:
        """Raw series and single values, by the names ``tuner.metrics.METRICS`` reads."""
        return Observations(
            series=series_of(self.samples),
            scalars={
                "vram_mib": self.memory.vram_mib,
                "vram_gpu_max_mib": self.memory.max_gpu_mib,
                "speedup": self.speedup,
                "throughput_tok_s": self.throughput_tok_s,
                "startup_s": startup_s,
                "cached_share_hit": self.cached_share_hit,
                "cached_share_miss": self.cached_share_miss,
                "goodput": self.goodput(slos or {}),
                "good_tok_s": self.good_tok_s(slos or {}),
                "requests_s": self.requests_s,
                "queue_ms": self.queue_ms,
                "preemptions": self.preemptions,
                "kv_peak": self.kv_peak,
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
            "cached_share_hit": self.cached_share_hit,
            "cached_share_miss": self.cached_share_miss,
            "late_ms": self.late_ms,
            "memory": self.memory.as_dict(),
            "metrics_available": self.metrics_available,
            "stop_reason": self.stop_reason,
            "conversations": len({x.conversation for x in self._of("miss")}),
            "distinct_conversations": self.distinct,
            "concurrency": self.concurrency,
            "failed_requests": self.failed_requests,
            "requests_s": self.requests_s,
            "queue_ms": self.queue_ms,
            "preemptions": self.preemptions,
            "kv_peak": self.kv_peak,
            "tokens_per_word": self.tokens_per_word,
            "max_prompt_tokens": max((x.prompt_tokens for x in self._measured()), default=0),
            "classes": self.classes(),
            "cache_cross_check": {
                "cached_tokens": sum(x.cached_tokens or 0 for x in self._measured()),
                "metrics_prefix_hits": self.trial_prefix_hits,
                "metrics_prefix_queries": self.trial_prefix_queries,
            },  # fmt: skip
        }

    def classes(self) -> dict[str, dict[str, float | int]]:
        """Per request class (cold, first_turn, continuation): count and TTFT p50/p90/p99."""
        out: dict[str, dict[str, float | int]] = {}
        measured = self._measured()
        for klass in dict.fromkeys(x.klass for x in measured if x.klass):
            xs = [x.ttft_ms for x in measured if x.klass == klass]
            out[klass] = {
                "n": len(xs),
                "ttft_p50_ms": percentile(xs, 50),
                "ttft_p90_ms": percentile(xs, 90),
                "ttft_p99_ms": percentile(xs, 99),
            }
        return out

    def to_json(self) -> dict[str, Any]:
        """Summary, cache config and every request's sample, as JSON-ready data."""
        return {
            "summary": self.summary(),
            "cache_config": self.cache_config,
            "samples": [asdict(s) for s in self.samples],
        }
