"""Concurrent load: C conversations in flight, request classes, per-request cache accounting
against the trial-level /metrics delta, hangs and overload."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from tuner.errors import MeasureError
from tuner.measure import TrialMeasurement, measure, stream_chat
from tuner.simulate import ServerModel, VirtualClock
from tuner.testing import FAST_WORKLOAD, fake_server
from tuner.types import Endpoint

C4 = FAST_WORKLOAD.model_copy(update={"concurrency": 4, "conversations": 8, "stagger_s": 0.0})


class TestConcurrency:
    def test_every_conversation_once_turns_in_order(self) -> None:
        """8 conversations at C=4: each measured once with all its turns, in turn order."""
        with fake_server(["--enable-prefix-caching"], clock=VirtualClock()) as srv:
            m = measure(Endpoint(srv.base_url, "fake-model"), C4)
        measured = [s for s in m.samples if s.kind != "warmup"]
        assert sorted({s.conversation for s in measured}) == list(range(8))
        for conv in range(8):
            turns = [s for s in measured if s.conversation == conv]
            assert [s.turn for s in turns] == [0, 1, 2]
            assert [s.started_s for s in turns] == sorted(s.started_s for s in turns)
        assert m.concurrency == 4
        assert m.summary()["concurrency"] == 4

    def test_classes_and_shared_prompt(self) -> None:
        """Salted prompts: first turns are cold and hold nothing cached. One shared system
        prompt: first turns are first_turn and find it cached."""
        for salt, first in ((True, "cold"), (False, "first_turn")):
            spec = C4.model_copy(update={"salt_system_prompt": salt, "system_prompt_words": 400})
            with fake_server(["--enable-prefix-caching"], clock=VirtualClock()) as srv:
                m = measure(Endpoint(srv.base_url, "fake-model"), spec)
            firsts = [s for s in m.samples if s.kind == "miss"]
            assert {s.klass for s in firsts} == {first}
            assert {s.klass for s in m.samples if s.kind == "hit"} == {"continuation"}
            cached = [s.cached_tokens or 0 for s in firsts]
            assert (max(cached) == 0) is salt
            classes = m.summary()["classes"]
            assert classes[first]["n"] == 8
            assert classes["continuation"]["n"] == 16

    def test_cache_accounting_matches_the_trial_metrics(self) -> None:
        """Under load per-request /metrics deltas are not read; the requests' own cached
        tokens add up to the trial-level /metrics delta of the measured phase."""
        with fake_server(["--enable-prefix-caching"], clock=VirtualClock()) as srv:
            m = measure(Endpoint(srv.base_url, "fake-model"), C4)
        measured = [s for s in m.samples if s.kind != "warmup"]
        assert all(s.server_ttft_ms is None for s in measured)
        assert sum(s.cached_tokens or 0 for s in measured) == m.trial_prefix_hits
        assert m.hit_rate_hit == m.cached_share_hit
        assert m.hit_rate_hit is not None
        assert m.hit_rate_hit > 0.5

    def test_tool_results_grow_the_context(self) -> None:
        """Tool results appended before each later turn: prompts grow by at least their size."""
        spec = C4.model_copy(update={"tool_result_words": 300})
        with fake_server(["--enable-prefix-caching"], clock=VirtualClock()) as srv:
            m = measure(Endpoint(srv.base_url, "fake-model"), spec)
        conv0 = [s for s in m.samples if s.conversation == 0]
        growth = [b.prompt_tokens - a.prompt_tokens for a, b in zip(conv0, conv0[1:], strict=False)]
        assert all(g >= 300 for g in growth)


def _sse(*events: object) -> bytes:
    return b"".join(
        f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n".encode() for e in events
    )


class TestFailuresUnderLoad:
    def test_a_silent_stream_is_a_hang(self) -> None:
        """The server accepts the request and answers /health, but sends no token for longer
        than the stall timeout: the request fails as `hang`, not as a slow measurement."""
        with fake_server(model=ServerModel(base_ms=3000.0)) as srv:
            assert httpx.get(f"{srv.base_url}/health").status_code == 200

            async def go() -> None:
                async with httpx.AsyncClient() as c:
                    await stream_chat(
                        c, srv.base_url, "fake-model", [{"role": "user", "content": "hi"}],
                        max_tokens=2, stall_timeout_s=0.2,
                    )  # fmt: skip

            with pytest.raises(MeasureError, match="no token for") as exc:
                asyncio.run(go())
        assert exc.value.reason == "hang"

    @pytest.mark.parametrize(("allowed", "fails"), [(0.5, False), (0.1, True)])
    def test_failed_share_beyond_the_limit_is_overload(self, allowed: float, fails: bool) -> None:
        """Every third request answers 500: counted while under max_error_share, `overload`
        beyond it."""
        count = {"chat": 0}

        def handler(r: httpx.Request) -> httpx.Response:
            if r.url.path != "/v1/chat/completions":
                return httpx.Response(404)
            count["chat"] += 1
            if count["chat"] % 3 == 0:
                return httpx.Response(500, content=b"boom")
            body = _sse({"choices": [{"delta": {"content": "x"}}]}, "[DONE]")
            return httpx.Response(200, content=body)

        spec = C4.model_copy(update={"max_error_share": allowed})
        ep = Endpoint("http://x", "m", reported_vram_mib=1.0)
        if fails:
            with pytest.raises(MeasureError, match="overloaded") as exc:
                measure(ep, spec, transport=httpx.MockTransport(handler))
            assert exc.value.reason == "overload"
        else:
            m = measure(ep, spec, transport=httpx.MockTransport(handler))
            assert m.failed_requests > 0


class TestGoodputAndBounds:
    def test_goodput_counts_requests_meeting_their_class_slo(self) -> None:
        """Goodput = share of measured requests whose TTFT and mean ITL meet their class's SLO;
        a class without an SLO always meets it; warm-up requests do not count."""
        from tuner.measure import TrialMeasurement
        from tuner.measure.vram import MemoryReading
        from tuner.schema import RequestRecord

        def rec(kind: str, klass: str, ttft: float, itl: tuple[float, ...]) -> RequestRecord:
            return RequestRecord(0, 0, kind, ttft, ttft, 1, 1, 0.0, 0.0, 0.0, None, 0, itl, 0.0,
                                 klass)  # type: ignore[arg-type]  # fmt: skip

        m = TrialMeasurement(
            samples=(
                rec("warmup", "cold", 9999.0, ()),
                rec("miss", "first_turn", 100.0, (5.0,)),  # no SLO for first_turn: ok
                rec("hit", "continuation", 40.0, (9.0, 11.0)),  # ok (mean ITL 10)
                rec("hit", "continuation", 60.0, (5.0,)),  # TTFT over 50
                rec("hit", "continuation", 30.0, (20.0,)),  # TPOT over 10
            ),
            memory=MemoryReading(1.0, "reported"),
        )
        assert m.goodput({"continuation": (50.0, 10.0)}) == pytest.approx(0.5)
        assert m.goodput({}) is None

    def test_constraints_from_the_objective_file(self, tmp_path: Path) -> None:
        """`constraints: [{metric: goodput, min: ...}]` are Optuna constraints: an SLO nobody
        meets makes every trial infeasible, a loose one none; goodput without SLOs is refused."""
        from tuner.config import load_objective
        from tuner.errors import ConfigError
        from tuner.study import RunSettings, StudyPaths, StudyRunner, load_study
        from tuner.testing import fake_profile

        base = (
            "name: g\nobjectives:\n  - {name: ttft_hit_p90_ms}\ncriteria: null\n"
            "workload: {system_prompt_words: 100, tools: 1, turns: 3, max_tokens: 3}\n"
            "constraints:\n  - {metric: goodput, min: 0.95}\n"
        )
        f = tmp_path / "o.yaml"
        f.write_text(base)
        with pytest.raises(ConfigError, match="goodput needs slos"):
            load_objective(f)
        from tuner.config import load_space

        space = load_space(Path(__file__).resolve().parents[2] / "search_spaces" / "seed_192.yaml")
        for name, ttft, feasible in (("strict", 0.001, False), ("loose", 60000.0, True)):
            f.write_text(base + f"slos:\n  continuation: {{ttft_ms: {ttft}}}\n")
            StudyRunner(
                paths=StudyPaths.create(name, tmp_path),
                space=space,
                seeds=(),
                objective=load_objective(f),
                profile=fake_profile(),
                settings=RunSettings(n_trials=2),
            ).run()
            trials = [t for t in load_study(StudyPaths.create(name, tmp_path)).trials
                      if t.state.name == "COMPLETE"]  # fmt: skip
            assert len(trials) == 2
            for t in trials:
                assert set(t.constraints) == {"goodput>=0.95"}
                assert (t.constraints["goodput>=0.95"] <= 0) is feasible


class TestSchedulerMetrics:
    def test_queue_preemptions_and_kv_peak_come_from_metrics(self) -> None:
        """At C=4 on a fake whose KV pool holds about two conversations: requests queue for
        blocks, growing decodes preempt others, and the KV peak nears 1 - all read from
        /metrics (vLLM's names) and stored as metrics usable as objectives or constraints."""
        spec = C4.model_copy(
            update={"tool_result_words": 200, "max_tokens": 48, "metrics_interval_s": 0.05}
        )
        tight = ServerModel(kv_tokens=1600, base_ms=20.0)
        with fake_server([], model=tight) as srv:
            m = measure(Endpoint(srv.base_url, "fake-model"), spec)
        with fake_server([], model=ServerModel(base_ms=20.0)) as srv:
            roomy = measure(Endpoint(srv.base_url, "fake-model"), spec)
        obs = m.observations()
        assert (obs.scalars["queue_ms"] or 0.0) > 0
        assert (m.preemptions or 0.0) > 0
        assert (m.kv_peak or 0.0) > 0.5
        assert roomy.preemptions == 0
        assert 0.0 < (roomy.kv_peak or 0.0) < (m.kv_peak or 0.0)
        s = m.summary()
        assert s["preemptions"] == m.preemptions
        assert s["requests_s"] > 0

    def test_parsing_under_either_name(self) -> None:
        from tuner.measure.metrics import parse_metrics

        text = (
            "# TYPE vllm:num_preemptions counter\nvllm:num_preemptions_total 3.0\n"
            "# TYPE vllm:gpu_cache_usage_perc gauge\nvllm:gpu_cache_usage_perc 0.4\n"
            "# TYPE vllm:request_queue_time_seconds histogram\n"
            'vllm:request_queue_time_seconds_bucket{le="+Inf"} 4.0\n'
            "vllm:request_queue_time_seconds_count 4.0\n"
            "vllm:request_queue_time_seconds_sum 0.2\n"
        )
        snap = parse_metrics(text)
        assert (snap.preemptions, snap.kv_usage, snap.queue_ms) == (3.0, 0.4, 50.0)
        assert parse_metrics("").kv_usage is None


class TestOpenLoop:
    def test_poisson_arrivals_overlap_conversations(self) -> None:
        """`rate`: conversations start at seeded exponential gaps, not when others end; at a
        high rate several are in flight, and every one is measured once."""
        spec = FAST_WORKLOAD.model_copy(update={"rate": 50.0, "conversations": 8})
        with fake_server(["--enable-prefix-caching"], model=ServerModel(base_ms=30.0)) as srv:
            m = measure(Endpoint(srv.base_url, "fake-model"), spec)
        measured = [s for s in m.samples if s.kind != "warmup"]
        assert sorted({s.conversation for s in measured}) == list(range(8))
        firsts = sorted(s.started_s for s in measured if s.turn == 0)
        lasts = {s.conversation: s.started_s + s.total_ms / 1000 for s in measured}
        # some conversation started before the previous one had ended: open loop
        order = sorted(
            lasts, key=lambda c: min(s.started_s for s in measured if s.conversation == c)
        )
        assert any(firsts[i + 1] < lasts[order[i]] for i in range(7))

    def test_rate_and_concurrency_together_are_refused(self) -> None:
        from pydantic import ValidationError

        with pytest.raises(ValidationError, match="either `concurrency`"):
            FAST_WORKLOAD.model_copy(update={"rate": 1.0, "concurrency": 2}).model_validate(
                {**FAST_WORKLOAD.model_dump(), "rate": 1.0, "concurrency": 2}
            )


class TestTokenSizedWorkload:
    def test_tool_results_in_tokens_follow_the_server_tokenizer(self) -> None:
        """`tool_result_tokens: [min, max]`: sized with the server's /tokenize (the fake counts
        one token per word), drawn per turn within the range; the ratio is stored."""
        spec = C4.model_copy(update={"tool_result_tokens": (200, 400), "tokens_per_word": 2.0})
        with fake_server(["--enable-prefix-caching"], clock=VirtualClock()) as srv:
            m = measure(Endpoint(srv.base_url, "fake-model"), spec)
        assert m.tokens_per_word == 1.0  # measured, not the 2.0 estimate
        growth = set()
        for conv in range(8):
            turns = [s for s in m.samples if s.conversation == conv]
            for a, b in zip(turns, turns[1:], strict=False):
                # the tool result + the user line (~12 words) + the previous answer (3 tokens)
                growth.add(b.prompt_tokens - a.prompt_tokens)
        assert all(200 + 12 <= g <= 400 + 25 for g in growth)
        assert len(growth) > 3  # drawn, not fixed
        assert m.summary()["max_prompt_tokens"] == max(s.prompt_tokens for s in m.samples)

    def test_context_tokens_stops_adding_turns(self) -> None:
        from tuner.measure.workload import AgentWorkload

        spec = FAST_WORKLOAD.model_copy(
            update={"turns": 50, "tool_result_tokens": 500, "context_tokens": 3000}
        )
        w = AgentWorkload(spec, tokens_per_word=1.0)
        c = w.conversation(0)
        assert 2 <= len(c.turns) < 50
        assert w.largest_prompt() <= 3000

    def test_a_shape_that_cannot_fit_is_refused_before_deploying(self, tmp_path: Path) -> None:
        """Estimated longest request over max_model_len: one line with the numbers, and no
        server was started."""
        from tuner.config import ObjectiveFile, load_space
        from tuner.errors import ConfigError
        from tuner.study import RunSettings, StudyPaths, StudyRunner
        from tuner.testing import fake_profile, study_starts

        space = load_space(Path(__file__).resolve().parents[2] / "search_spaces" / "seed_192.yaml")
        spec = FAST_WORKLOAD.model_copy(update={"turns": 10, "tool_result_tokens": 1000})
        objective = ObjectiveFile.model_validate(
            {"name": "o", "objectives": [{"name": "ttft_hit_ms"}], "criteria": None}
        ).model_copy(update={"workload": spec})
        with pytest.raises(ConfigError, match=r"needs about \d+ tokens .* max_model_len is 4096"):
            StudyRunner(
                paths=StudyPaths.create("fit", tmp_path), space=space, seeds=(),
                objective=objective, profile=fake_profile(), settings=RunSettings(n_trials=2),
            ).run()  # fmt: skip
        assert study_starts(tmp_path / "fit") == 0

    def test_bad_sizes_are_refused(self) -> None:
        from pydantic import ValidationError

        from tuner.config.workload import SyntheticAgentSpec

        for bad in ({"tool_result_tokens": (5, 1)},
                    {"tool_result_tokens": 10, "tool_result_words": 10}):  # fmt: skip
            with pytest.raises(ValidationError):
                SyntheticAgentSpec.model_validate(bad)


TIMED = FAST_WORKLOAD.model_copy(
    update={"timing": "timetable", "arrival_gap_s": 0.05, "turn_gap_s": 0.04, "conversations": 6}
)


class TestTimetable:
    """The load's timing drawn once from the seed: the same arrivals on every deployment."""

    def test_the_timetable_is_drawn_from_the_seed(self) -> None:
        """Two timetables of one seed are identical; another seed's differs; starts are in
        order and each conversation's turns follow its start, in order."""
        from tuner.measure.timetable import Timetable

        def times(seed: int) -> list[tuple[float, ...]]:
            t = Timetable(TIMED.model_copy(update={"seed": seed}))
            return [tuple(t.send_at(k, j) for j in range(3)) for k in range(20)]

        assert times(7) == times(7)
        assert times(7) != times(8)
        starts = [row[0] for row in times(7)]
        assert starts == sorted(starts)
        assert starts[0] == 0.0
        assert all(list(row) == sorted(row) for row in times(7))

    def test_requests_go_out_at_their_times_on_every_run(self) -> None:
        """Against a server that answers at once, each request goes out at its scheduled
        time (its lateness recorded), and two runs of one seed keep the same schedule: the
        load is data, not a consequence of the answers."""
        from tuner.measure.timetable import Timetable

        plan = Timetable(TIMED)
        runs = []
        for _ in range(2):
            with fake_server(["--enable-prefix-caching"], clock=VirtualClock()) as srv:
                m = measure(Endpoint(srv.base_url, "fake-model"), TIMED)
            measured = [s for s in m.samples if s.kind != "warmup"]
            assert all(s.late_ms is not None and s.late_ms >= 0 for s in measured)
            first = next(s for s in measured if (s.conversation, s.turn) == (0, 0))
            origin = first.started_s - (first.late_ms or 0) / 1000
            due = {(s.conversation, s.turn): s.started_s - (s.late_ms or 0) / 1000 - origin
                   for s in measured}  # fmt: skip
            for (k, j), at in due.items():
                assert at == pytest.approx(plan.send_at(k, j), abs=0.005)
            runs.append(sorted(due))
            assert m.summary()["late_ms"] is not None
        assert runs[0] == runs[1]

    def test_a_timetable_sets_its_own_load(self) -> None:
        from pydantic import ValidationError

        with pytest.raises(ValidationError, match="a timetable sets its own load"):
            type(FAST_WORKLOAD).model_validate(
                {**FAST_WORKLOAD.model_dump(), "timing": "timetable", "concurrency": 4}
            )


def test_each_conversation_opens_with_its_own_task() -> None:
    """With one shared system prompt, a first turn is a MISS on its own words: no two
    conversations open with the same user line, and the prefix cache holds the system prompt
    of a first turn, never all of it (its cached share is stored, so MISS means a miss)."""
    from tuner.measure.workload import AgentWorkload

    spec = C4.model_copy(update={"salt_system_prompt": False, "system_prompt_words": 400})
    w = AgentWorkload(spec)
    openers = {w.user_message(k, 0) for k in range(8)}
    assert len(openers) == 8
    with fake_server(["--enable-prefix-caching"], clock=VirtualClock()) as srv:
        m = measure(Endpoint(srv.base_url, "fake-model"), spec)
    share = m.cached_share_miss
    assert share is not None
    assert 0 < share < 1
    firsts = [s for s in m.samples if s.kind == "miss"]
    assert all((s.cached_tokens or 0) < s.prompt_tokens for s in firsts)
    assert m.observations().scalars["cached_share_miss"] == share


class TestDecidedStop:
    @pytest.mark.parametrize("timing", ["closed", "timetable"])
    def test_a_decided_measurement_ends_at_once(self, timing: str) -> None:
        """At C=4 (or on a timetable), a measurement that ``decided`` ends after its minimum
        stops there: the conversations in flight are cancelled, not counted as failures, and
        what completed is kept."""
        calls: list[int] = []

        def decided(m: object) -> str | None:
            calls.append(1)
            return "dominated"

        update = {"conversations": 8, "max_conversations": 16, "decided_after": 2}
        if timing == "timetable":
            update |= {"timing": "timetable", "arrival_gap_s": 0.05, "turn_gap_s": 0.0}
            spec = FAST_WORKLOAD.model_copy(update=update)
        else:
            spec = C4.model_copy(update=update)
        with fake_server(["--enable-prefix-caching"], model=ServerModel(base_ms=20.0)) as srv:
            m = measure(Endpoint(srv.base_url, "fake-model"), spec, decided=decided)
        done = {s.conversation for s in m.samples if s.kind == "miss"}
        assert m.stop_reason == "dominated"
        assert len(calls) == 1
        assert 2 <= len(done) < 8
        assert m.failed_requests == 0

    def test_not_before_its_minimum(self) -> None:
        spec = C4.model_copy(update={"decided_after": 8})
        seen: list[int] = []

        def decided(m: TrialMeasurement) -> str | None:
            seen.append(m.miss.n)
            return None

        with fake_server(["--enable-prefix-caching"], clock=VirtualClock()) as srv:
            m = measure(Endpoint(srv.base_url, "fake-model"), spec, decided=decided)
        assert m.stop_reason == "fixed"
        assert seen
        assert min(seen) >= 8  # asked only once 8 conversations are measured
