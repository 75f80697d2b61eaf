"""The simulated engine's scheduler, in virtual time: what the scheduling flags do, and when.

At one conversation at a time ``max_num_seqs`` and chunked prefill have nothing to schedule;
at eight they move the tail of TTFT. Per-request cached tokens add up to the engine's counters,
and a KV pool too small for the working set evicts prefixes and preempts.
"""

from __future__ import annotations

import random
import statistics

import pytest

from tuner.config.rules import parse_flags
from tuner.simulate import Scheduler, SchedulerConfig, Served, closed_loop
from tuner.simulate.scheduler import BLOCK, SimRequest, block_hashes

SYSTEM = [f"s{i}" for i in range(800)]  # one system prompt shared by every conversation


def agent_conversations(n: int, turns: int, seed: int = 0) -> list[list[list[str]]]:
    """Agent-shaped conversations: shared system prompt, tool results of 200-1200 words."""
    rng = random.Random(seed)
    out = []
    for c in range(n):
        history = [*SYSTEM, *(f"u{c}.{i}" for i in range(40))]
        prompts = []
        for t in range(turns):
            prompts.append(list(history))
            answer = [f"a{c}.{t}.{i}" for i in range(32)]
            tool = [f"t{c}.{t}.{i}" for i in range(rng.randint(200, 1200))]
            history += answer + tool
        out.append(prompts)
    return out


def run(flags: list[str], concurrency: int, kv_tokens: int = 1_000_000) -> list[Served]:
    sched = Scheduler(SchedulerConfig.from_flags(parse_flags(flags), kv_tokens))
    return closed_loop(
        sched, agent_conversations(8, 5), concurrency=concurrency, max_tokens=32, stagger_s=0.01
    )


def ttfts(served: list[Served], klass: str | None = None) -> list[float]:
    return [s.ttft_s for s in served if klass is None or s.klass == klass]


def p90(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=10)[-1]


BASE = ["--max-model-len", "16384"]


class TestWhenKnobsBind:
    def test_at_one_conversation_seqs_and_chunking_change_nothing(self) -> None:
        """One request in flight: a batch-slot cap or chunked prefill (budget above the prompt)
        gives the very same TTFT for every request."""
        ref = ttfts(run(BASE, 1))
        assert ttfts(run([*BASE, "--max-num-seqs", "2"], 1)) == ref
        assert ttfts(run([*BASE, "--no-enable-chunked-prefill"], 1)) == ref

    def test_at_eight_conversations_seqs_move_the_tail(self) -> None:
        """Eight in flight and two batch slots: the others queue for a slot, TTFT grows."""
        free = run(BASE, 8)
        capped = run([*BASE, "--max-num-seqs", "2"], 8)
        assert p90(ttfts(capped)) > 1.4 * p90(ttfts(free))
        assert statistics.median(ttfts(capped)) > 3 * statistics.median(ttfts(free))
        assert max(s.queue_s for s in capped) > 0.0
        assert max(s.queue_s for s in run(BASE, 1)) == 0.0

    def test_at_eight_conversations_chunking_trades_ttft_for_decode_stalls(self) -> None:
        """Without chunking a long prefill stalls the decodes of everyone in the batch; a small
        chunked budget bounds that stall and pays in TTFT. At C=1 nobody else decodes: the
        stall is the same either way."""
        small = [*BASE, "--max-num-batched-tokens", "256"]
        unchunked = [*BASE, "--no-enable-chunked-prefill"]

        def stall(served: list[Served]) -> float:
            return p90([s.max_gap_s for s in served])

        assert stall(run(small, 8)) < 0.5 * stall(run(unchunked, 8))
        assert p90(ttfts(run(small, 8))) > p90(ttfts(run(unchunked, 8)))
        assert stall(run(small, 1)) == pytest.approx(stall(run(unchunked, 1)))


class TestCacheAccounting:
    def test_per_request_cached_tokens_add_up_to_the_counters(self) -> None:
        """No preemption: the cached tokens each request was told add up to the hit counter, and
        every continuation hits (the shared system prompt and its own history)."""
        sched = Scheduler(SchedulerConfig.from_flags(parse_flags(BASE), 1_000_000))
        served = closed_loop(
            sched, agent_conversations(8, 5), concurrency=8, max_tokens=32, stagger_s=0.05
        )
        assert sched.preemptions == 0
        assert sum(s.cached_tokens for s in served) == sched.hits
        assert sum(s.prompt_tokens for s in served) == sched.queries
        assert all(s.cached_tokens > 0 for s in served if s.klass == "continuation")
        # staggered first turns after the very first find the shared system prompt cached
        firsts = [s for s in served if s.turn == 0]
        assert sum(1 for s in firsts if s.cached_tokens >= len(SYSTEM) // BLOCK * BLOCK) == 7

    def test_prefix_caching_off_never_hits(self) -> None:
        served = run([*BASE, "--no-enable-prefix-caching"], 8)
        assert all(s.cached_tokens == 0 for s in served)

    def test_a_pool_smaller_than_the_working_set_evicts_and_preempts(self) -> None:
        """The same load at util 0.95 and 0.30 of a pool that holds ~3 conversations at 0.95:
        the smaller pool hits the cache less, preempts, and recomputes."""
        kv = 24_000
        big = Scheduler(
            SchedulerConfig.from_flags(parse_flags([*BASE, "--gpu-memory-utilization", "0.95"]), kv)
        )  # noqa: E501
        small = Scheduler(
            SchedulerConfig.from_flags(parse_flags([*BASE, "--gpu-memory-utilization", "0.3"]), kv)
        )  # noqa: E501
        conv = agent_conversations(8, 5)
        a = closed_loop(big, conv, concurrency=8, max_tokens=32)
        b = closed_loop(small, conv, concurrency=8, max_tokens=32)
        share = [sum(s.cached_tokens for s in x) / sum(s.prompt_tokens for s in x) for x in (a, b)]
        assert share[1] < share[0]
        assert small.preemptions > big.preemptions
        assert small.queries > sum(s.prompt_tokens for s in b)  # recomputed prompts counted again
        assert 0.0 < small.kv_peak <= 1.0
        assert len(b) == len(a)  # every request still served

    def test_a_prompt_larger_than_the_pool_fails_instead_of_waiting_forever(self) -> None:
        sched = Scheduler(SchedulerConfig(kv_blocks=4))
        req = SimRequest(block_hashes(["w"] * 200), 200, 4)
        sched.submit(req)
        _, out = sched.step(0.0)
        assert req.error is not None
        assert out[0].finished
        assert not sched.busy


class TestPool:
    def test_blocks_are_released_and_kept_for_reuse(self) -> None:
        """A finished request's prompt blocks stay cached (not counted as used) until needed."""
        sched = Scheduler(SchedulerConfig(kv_blocks=64))
        words = [f"w{i}" for i in range(160)]
        for _ in range(2):
            sched.submit(SimRequest(block_hashes(words), len(words), 2))
            while sched.busy:
                sched.step(0.0)
        assert sched.used_blocks == 0
        assert len(sched.lru) == 10
        assert sched.hits == 144  # second time: all but the last block (its last token recomputed)
