"""vLLM's Prometheus ``/metrics``: prefix-cache counters, server-side TTFT, queue time,
preemptions, KV-cache usage and the cache config."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tuner.errors import MeasureError

__all__ = ["MetricsSnapshot", "fetch_metrics", "parse_metrics"]


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """Counters summed over engines/models; ``cache_config`` is vLLM's cache_config_info labels."""

    prefix_queries: float = 0.0  # prompt tokens looked up in the prefix cache
    prefix_hits: float = 0.0  # of which found
    ttft_sum_s: float = 0.0  # server-side TTFT histogram
    ttft_count: float = 0.0
    queue_sum_s: float = 0.0  # vllm:request_queue_time_seconds: waiting before scheduled
    queue_count: float = 0.0
    preemptions: float = 0.0  # vllm:num_preemptions
    kv_usage: float | None = None  # vllm:kv_cache_usage_perc (0-1), a gauge: now, not a delta
    cache_config: dict[str, str] = field(default_factory=dict)
    available: bool = True

    def delta(self, before: MetricsSnapshot) -> MetricsSnapshot:
        """What happened between ``before`` and this snapshot: each counter's difference (the
        gauges and the cache configuration as now)."""
        return MetricsSnapshot(
            prefix_queries=self.prefix_queries - before.prefix_queries,
            prefix_hits=self.prefix_hits - before.prefix_hits,
            ttft_sum_s=self.ttft_sum_s - before.ttft_sum_s,
            ttft_count=self.ttft_count - before.ttft_count,
            queue_sum_s=self.queue_sum_s - before.queue_sum_s,
            queue_count=self.queue_count - before.queue_count,
            preemptions=self.preemptions - before.preemptions,
            kv_usage=self.kv_usage,
            cache_config=self.cache_config,
            available=self.available and before.available,
        )

    @property
    def queue_ms(self) -> float | None:
        """Mean time a request waited to be scheduled (ms), from the histogram's sum/count."""
        return self.queue_sum_s / self.queue_count * 1000.0 if self.queue_count > 0 else None

    def _config_number(self, key: str) -> float | None:
        """A number of vLLM's cache_config_info labels; None when absent or not a number."""
        v = self.cache_config.get(key)
        try:
            return float(v) if v not in (None, "None") else None
        except ValueError:
            return None

    @property
    def kv_cache_bytes(self) -> float | None:
        """Set on vLLM-CPU (its KV space); GPU vLLM 0.25 leaves it None and gives tokens."""
        return self._config_number("kv_cache_memory_bytes")

    @property
    def kv_cache_tokens(self) -> float | None:
        """KV-cache capacity in tokens (``kv_cache_size_tokens``, else blocks x block size)."""
        tokens = self._config_number("kv_cache_size_tokens")
        if tokens is not None:
            return tokens
        blocks, size = self._config_number("num_gpu_blocks"), self._config_number("block_size")
        return blocks * size if blocks is not None and size is not None else None


_COUNTERS = {
    "vllm:prefix_cache_queries": "prefix_queries",
    "vllm:prefix_cache_hits": "prefix_hits",
    # vLLM V0 names, so older servers still report a hit rate
    "vllm:gpu_prefix_cache_queries": "prefix_queries",
    "vllm:gpu_prefix_cache_hits": "prefix_hits",
    "vllm:num_preemptions": "preemptions",
}
_SUMS = {
    "vllm:time_to_first_token_seconds_sum": "ttft_sum_s",
    "vllm:time_to_first_token_seconds_count": "ttft_count",
    "vllm:request_queue_time_seconds_sum": "queue_sum_s",
    "vllm:request_queue_time_seconds_count": "queue_count",
}


def parse_metrics(text: str) -> MetricsSnapshot:
    """Parse the Prometheus text format (with prometheus_client's parser)."""
    acc = dict.fromkeys(_SUMS.values(), 0.0) | dict.fromkeys(_COUNTERS.values(), 0.0)
    kv: float | None = None
    cache_config: dict[str, str] = {}
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as exc:
        raise MeasureError(f"unparseable /metrics: {exc}") from exc
    for fam in families:
        for s in fam.samples:
            name = s.name.removesuffix("_total")
            if name in _COUNTERS and s.name.endswith("_total"):
                acc[_COUNTERS[name]] += s.value
            elif s.name in _SUMS:
                acc[_SUMS[s.name]] += s.value
            elif s.name in ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"):
                kv = max(kv or 0.0, s.value)  # several engines: the fullest one
            elif s.name == "vllm:cache_config_info":
                cache_config = dict(s.labels)
    return MetricsSnapshot(
        prefix_queries=acc["prefix_queries"],
        prefix_hits=acc["prefix_hits"],
        ttft_sum_s=acc["ttft_sum_s"],
        ttft_count=acc["ttft_count"],
        queue_sum_s=acc["queue_sum_s"],
        queue_count=acc["queue_count"],
        preemptions=acc["preemptions"],
        kv_usage=kv,
        cache_config=cache_config,
    )


async def fetch_metrics(client: httpx.AsyncClient, base_url: str) -> MetricsSnapshot:
    """GET ``/metrics``; a server without it gives an empty, ``available=False`` snapshot."""
    try:
        resp = await client.get(f"{base_url}/metrics", timeout=30.0)
    except httpx.HTTPError as exc:
        raise MeasureError(f"cannot read /metrics: {exc}") from exc
    if resp.status_code == 404:
        return MetricsSnapshot(available=False)
    if resp.status_code != 200:
        raise MeasureError(f"HTTP {resp.status_code} from /metrics")
    return parse_metrics(resp.text)
