"""Measurement maths and the streaming client, against MockTransport and the fake server."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import httpx
import pytest

from tuner.config import WorkloadSpec
from tuner.errors import MeasureError
from tuner.measure import AgentWorkload, measure, parse_metrics, percentile, stream_chat, summarize
from tuner.measure.vram import GpuRow, MemoryReading, gpu_reading
from tuner.metrics import METRICS, Observations
from tuner.simulate import VirtualClock
from tuner.testing import FAST_WORKLOAD, fake_server
from tuner.types import Endpoint


class TestStats:
    def test_summary(self) -> None:
        """Median, p90 (numpy-style interpolation), range and IQR of a known sample."""
        s = summarize([1.0, 2.0, 3.0, 4.0, 10.0])
        assert (s.n, s.median, s.min, s.max) == (5, 3.0, 1.0, 10.0)
        assert s.p90 == pytest.approx(7.6)
        assert s.iqr == pytest.approx(2.0)

    def test_percentile_edges(self) -> None:
        """p0 and p100 are the extremes; one value is every percentile."""
        assert percentile([5.0, 1.0], 0) == 1.0
        assert percentile([5.0, 1.0], 100) == 5.0
        assert percentile([3.0], 90) == 3.0


def _sse(*events: object) -> bytes:
    return b"".join(
        f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n".encode() for e in events
    )


def _run_stream(handler: httpx.MockTransport, **kw: Any) -> object:
    async def go() -> object:
        async with httpx.AsyncClient(transport=handler) as c:
            return await stream_chat(
                c, "http://x", "m", [{"role": "user", "content": "hi"}], max_tokens=3, **kw
            )

    return asyncio.run(go())


class TestClient:
    def test_role_chunk_is_not_first_token(self) -> None:
        """The empty role chunk does not stop the TTFT clock; usage gives the token count."""
        body = _sse(
            {"choices": [{"delta": {"role": "assistant", "content": ""}}]},
            {"choices": [{"delta": {"content": "a"}}]},
            {"choices": [{"delta": {"content": "b"}}]},
            {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}},
            "[DONE]",
        )
        t = _run_stream(httpx.MockTransport(lambda r: httpx.Response(200, content=body)))
        assert t.text == "ab"  # type: ignore[attr-defined]
        assert t.completion_tokens == 2  # type: ignore[attr-defined]
        assert t.prompt_tokens == 7  # type: ignore[attr-defined]
        assert 0 < t.ttft_s <= t.total_s  # type: ignore[attr-defined]

    def test_request_sends_streaming_vllm_body(self) -> None:
        """Streaming, usage, ignore_eos and the model name are sent."""
        seen: dict[str, object] = {}

        def handler(r: httpx.Request) -> httpx.Response:
            seen.update(json.loads(r.content))
            return httpx.Response(
                200, content=_sse({"choices": [{"delta": {"content": "x"}}]}, "[DONE]")
            )

        _run_stream(httpx.MockTransport(handler))
        assert seen["stream"] is True
        assert seen["ignore_eos"] is True
        assert seen["model"] == "m"

    @pytest.mark.parametrize(
        ("response", "match"),
        [
            (httpx.Response(500, content=b"boom"), "HTTP 500"),
            (
                httpx.Response(
                    200, content=_sse({"choices": [{"delta": {"content": ""}}]}, "[DONE]")
                ),
                "without any content",
            ),
            (httpx.Response(200, content=b"data: {nope\n\n"), "malformed"),
            (httpx.Response(200, content=_sse({"error": {"message": "x"}})), "server error"),
        ],
    )
    def test_errors_become_measure_error(self, response: httpx.Response, match: str) -> None:
        """Every way a stream can go wrong is a MeasureError (reason request_error)."""
        with pytest.raises(MeasureError, match=match) as exc:
            _run_stream(httpx.MockTransport(lambda r: response))
        assert exc.value.reason == "request_error"

    def test_transport_error(self) -> None:
        """A refused connection is converted where it enters."""

        def handler(r: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("refused")

        with pytest.raises(MeasureError, match="request failed"):
            _run_stream(httpx.MockTransport(handler))


VLLM_METRICS = """\
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 3497.0
vllm:prefix_cache_queries_created{engine="0",model_name="m"} 1.7e+09
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 3456.0
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 2.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 2.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 0.5
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="128",enable_prefix_caching="True",kv_cache_memory_bytes="1073741824"} 1.0
"""


def test_parse_real_vllm_metrics() -> None:
    """Counters (not their _created twins), the TTFT histogram and the cache config are read."""
    m = parse_metrics(VLLM_METRICS)
    assert (m.prefix_queries, m.prefix_hits) == (3497.0, 3456.0)
    assert (m.ttft_sum_s, m.ttft_count) == (0.5, 2.0)
    assert m.kv_cache_bytes == 1073741824.0
    assert m.cache_config["enable_prefix_caching"] == "True"


def test_workload_is_deterministic_and_salted() -> None:
    """Same texts in every trial; the salt opens the system prompt so turn 1 is a true MISS;
    each conversation has its own lines (its own task), the same on every deployment."""
    w = AgentWorkload(WorkloadSpec(system_prompt_words=50, tools=3))
    a, b = w.system_prompt("s1"), w.system_prompt("s2")
    assert a.startswith("Session s1.")
    assert b.startswith("Session s2.")
    assert a.removeprefix("Session s1.") == b.removeprefix("Session s2.")
    assert '"name":"search_file_0"' in a
    assert w.user_message(0, 1) != w.user_message(5, 1)
    assert w.user_message(0, 1) != w.user_message(0, 2)
    assert w.user_message(5, 1) == AgentWorkload(w.spec).user_message(5, 1)
    assert w.conversation(2) == AgentWorkload(w.spec).conversation(2)


def _chunk(content: str, done: int, cached: int | None = None) -> dict[str, object]:
    usage: dict[str, object] = {"prompt_tokens": 64, "completion_tokens": done}
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return {"choices": [{"delta": {"content": content}}], "usage": usage}


class TestChunksAndCache:
    def test_bundled_chunks_count_their_tokens(self) -> None:
        """A chunk carrying 3 tokens 30 ms after the previous one is 10 ms per token, not a
        30 ms gap nor a 0 ms one; the decode rate follows (an injected clock yields 0, then
        100/130/140 ms per chunk, then 200 ms)."""
        ticks = iter([0.0, 0.100, 0.130, 0.140, 0.200])
        body = _sse(_chunk("a", 1, 48), _chunk("bcd", 4, 48), _chunk("e", 5, 48), "[DONE]")
        t = _run_stream(
            httpx.MockTransport(lambda r: httpx.Response(200, content=body)),
            clock=lambda: next(ticks),
        )
        assert t.itl_ms == pytest.approx((10.0, 10.0))  # type: ignore[attr-defined]
        assert t.decode_tok_s == pytest.approx(100.0)  # type: ignore[attr-defined]
        assert t.cached_tokens == 48  # type: ignore[attr-defined]
        assert t.ttft_s == pytest.approx(0.1)  # type: ignore[attr-defined]

    @pytest.mark.parametrize(
        ("events", "cached"),
        [
            ([_chunk("a", 1, 32)], 32),  # reported
            ([_chunk("a", 1, 0)], 0),  # reported zero
            ([_chunk("a", 1)], 0),  # usage without details: nothing was cached
            ([{"choices": [{"delta": {"content": "a"}}]}], None),  # no usage: unknown
        ],
    )
    def test_cached_tokens_parsing(self, events: list[object], cached: int | None) -> None:
        """usage.prompt_tokens_details.cached_tokens: present, zero, absent (0), no usage."""
        body = _sse(*events, "[DONE]")
        t = _run_stream(httpx.MockTransport(lambda r: httpx.Response(200, content=body)))
        assert t.cached_tokens == cached  # type: ignore[attr-defined]

    def test_per_request_cached_tokens_add_up_to_the_engine_counters(self) -> None:
        """Every request's cached tokens (usage) summed equal the engine's prefix-cache hit
        counter; the trial-level /metrics delta stays as the cross-check."""
        with fake_server(["--enable-prefix-caching"], clock=VirtualClock()) as srv:
            m = measure(Endpoint(srv.base_url, "fake-model"), FAST_WORKLOAD)
            counted = srv.engine.hits  # type: ignore[attr-defined]
        assert sum(x.cached_tokens or 0 for x in m.samples) == counted
        assert sum(x.prefix_hits for x in m.samples) == counted
        assert all((x.cached_tokens or 0) > 0 for x in m.samples if x.kind == "hit")
        share = m.cached_share_hit
        assert share is not None
        assert 0.5 < share < 1.0


class TestAgainstFakeServer:
    """The simulated engine models time (VirtualClock: nothing waits), so the assertions read
    the server's own modelled TTFT from /metrics, never the wall clock."""

    def test_prefix_caching_on_gives_hits_and_speedup(self) -> None:
        """With prefix caching, later turns hit the cache and their modelled prefill is shorter
        than the salted first turn's."""
        with fake_server(["--enable-prefix-caching"], clock=VirtualClock()) as srv:
            m = measure(
                Endpoint(srv.base_url, "fake-model"),
                FAST_WORKLOAD.model_copy(update={"system_prompt_words": 600}),
            )
        assert m.miss.n == 3
        assert m.hit.n == 6
        assert len(m.samples) == 12
        assert m.hit_rate_hit is not None
        assert m.hit_rate_hit > 0.5
        assert m.hit_rate_miss == 0.0
        s = m.summary()
        assert s["server_ttft_miss_ms"] > 1.5 * s["server_ttft_hit_ms"]
        vram = METRICS["vram_mib"].compute(m.observations())
        assert vram == pytest.approx(900.0)  # KV cache of the fake at 0.9

    def test_prefix_caching_off_has_zero_hit_rate(self) -> None:
        """Without prefix caching the hit rate is 0 and later (longer) turns cost more prefill."""
        with fake_server(["--no-enable-prefix-caching"], clock=VirtualClock()) as srv:
            m = measure(Endpoint(srv.base_url, "fake-model"), FAST_WORKLOAD)
        assert m.hit_rate_hit == 0.0
        s = m.summary()
        assert s["server_ttft_hit_ms"] > s["server_ttft_miss_ms"]

    def test_virtual_clock_adds_up_the_modelled_time(self) -> None:
        """The engine's TTFT histogram and the clock agree: nothing is timed, all is counted."""
        clock = VirtualClock()
        with fake_server(["--enable-prefix-caching"], clock=clock) as srv:
            m = measure(Endpoint(srv.base_url, "fake-model"), FAST_WORKLOAD)
        prefill = sum(x.server_ttft_ms or 0.0 for x in m.samples) / 1000.0
        decode = len(m.samples) * (FAST_WORKLOAD.max_tokens - 1) * srv.engine.decode_s
        assert clock.elapsed == pytest.approx(prefill + decode)

    def test_raw_samples_and_server_ttft_are_kept(self) -> None:
        """Every request is stored with its /metrics delta and the server's own TTFT."""
        with fake_server(["--enable-prefix-caching"]) as srv:
            m = measure(Endpoint(srv.base_url, "fake-model"), FAST_WORKLOAD)
        doc = m.to_json()
        assert len(doc["samples"]) == 12
        hit = [s for s in doc["samples"] if s["kind"] == "hit"]
        assert all(s["prefix_queries"] > 0 and s["server_ttft_ms"] is not None for s in hit)
        # the server waits out its modelled TTFT before the first token: the client sees more
        assert all(s["server_ttft_ms"] <= s["ttft_ms"] for s in hit)

    def test_http_500_is_a_measure_error(self) -> None:
        """A server that answers errors fails the measurement."""
        with (
            fake_server([], fail_chat=True) as srv,
            pytest.raises(MeasureError, match="HTTP 500"),
        ):
            measure(Endpoint(srv.base_url, "fake-model"), FAST_WORKLOAD)


def test_gpu_memory_per_gpu_under_tensor_parallelism() -> None:
    """TP 2: one worker per GPU; the total is their sum, the busiest GPU is what must fit a card,
    and another tenant's GPU (2) is not the server's."""
    rows = [
        GpuRow(0, 40_000.0, 41_000.0, server_listed=True, any_listed=True),
        GpuRow(1, 39_000.0, 40_500.0, server_listed=True, any_listed=True),
        GpuRow(2, 0.0, 70_000.0, server_listed=False, any_listed=True),
    ]
    m = gpu_reading(rows, kv_mib=30_000.0)
    assert m is not None
    assert (m.source, m.vram_mib, m.max_gpu_mib) == ("nvml", 79_000.0, 40_000.0)
    assert m.per_gpu_mib == {"0": 40_000.0, "1": 39_000.0}
    assert m.as_dict()["per_gpu_mib"] == {"0": 40_000.0, "1": 39_000.0}


def test_gpu_memory_without_process_listing() -> None:
    """In a container NVML may list no process: the used memory of such GPUs stands in, and a GPU
    whose processes are all someone else's is left out."""
    rows = [
        GpuRow(0, 0.0, 20_000.0, server_listed=False, any_listed=False),
        GpuRow(1, 0.0, 21_000.0, server_listed=False, any_listed=False),
        GpuRow(2, 0.0, 70_000.0, server_listed=False, any_listed=True),
        GpuRow(3, 0.0, 0.0, server_listed=False, any_listed=False),
    ]
    m = gpu_reading(rows, kv_mib=None)
    assert m is not None
    assert m.source == "nvml-device"
    assert m.per_gpu_mib == {"0": 20_000.0, "1": 21_000.0}
    assert m.vram_mib == 41_000.0
    assert gpu_reading([GpuRow(0, 0.0, 0.0, False, False)], None) is None


def test_vram_per_gpu_metric_is_nan_off_gpu() -> None:
    """The busiest-GPU metric has no value where memory is RSS (vLLM-CPU)."""
    m = MemoryReading(vram_mib=5000.0, source="rss+kv", rss_mib=4000.0, kv_cache_mib=1000.0)
    assert m.max_gpu_mib is None
    assert math.isnan(
        METRICS["vram_gpu_max_mib"].compute(Observations(scalars={"vram_gpu_max_mib": None}))
    )
