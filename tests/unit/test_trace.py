"""The trace workload: both formats, bad lines with FILE:LINE, splits, and replay semantics
(recorded history as the prompt, recorded answers appended, tools forwarded)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tuner.config import TraceSpec
from tuner.errors import ConfigError
from tuner.measure import measure
from tuner.measure._conversation import Conversation
from tuner.measure.trace import TraceWorkload, check_trace
from tuner.types import Endpoint

TOOLS = [{"type": "function", "function": {"name": "read_file", "parameters": {}}}]


def openai_line(i: int) -> dict[str, object]:
    call = {"id": f"c{i}", "type": "function",
            "function": {"name": "read_file", "arguments": json.dumps({"path": f"f{i}"})}}  # fmt: skip
    return {
        "messages": [
            {"role": "system", "content": "You are an agent. " * 20},
            {"role": "user", "content": f"task {i}"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"c{i}", "content": "line " * 200},
            {"role": "assistant", "content": "The file says hello. " * 10},
            {"role": "user", "content": "thanks"},
            {"role": "assistant", "content": "ok"},
        ],
        "tools": TOOLS,
    }


def write_openai(path: Path, n: int) -> Path:
    path.write_text("\n".join(json.dumps(openai_line(i)) for i in range(n)) + "\n")
    return path


class TestFormats:
    def test_openai_turns(self, tmp_path: Path) -> None:
        """Each assistant message is a turn; what precedes it is appended before the request;
        the tools are kept; the output length follows the recorded answer."""
        spec = TraceSpec(path=write_openai(tmp_path / "t.jsonl", 5), holdout=0.0)
        c = TraceWorkload(spec).conversation(0)
        assert [m["role"] for m in c.opening] == ["system"]
        assert len(c.turns) == 3
        assert [m["role"] for m in c.turns[0].before] == ["user"]
        assert [m["role"] for m in c.turns[1].before] == ["tool"]
        assert c.turns[0].answer is not None
        assert c.turns[0].answer["tool_calls"][0]["id"] == "c0"
        assert c.tools == TOOLS
        assert c.turns[1].max_tokens == len("The file says hello. " * 10 + '""') // 4
        assert c.turns[2].max_tokens == 1  # "ok": at least one token

    @pytest.mark.parametrize("as_list", [True, False])
    def test_sharegpt(self, tmp_path: Path, as_list: bool) -> None:
        """ShareGPT (a JSON list or JSONL) maps human/gpt/system to user/assistant/system."""
        docs = [{"conversations": [{"from": "system", "value": "sys"},
                                   {"from": "human", "value": f"q{i}"},
                                   {"from": "gpt", "value": "a" * 40},
                                   {"from": "human", "value": "more"},
                                   {"from": "gpt", "value": "b" * 8}]} for i in range(3)]  # fmt: skip
        f = tmp_path / "s.json"
        f.write_text(json.dumps(docs) if as_list else "\n".join(json.dumps(d) for d in docs))
        c = TraceWorkload(TraceSpec(path=f, format="sharegpt", holdout=0.0)).conversation(1)
        assert c.opening == ({"role": "system", "content": "sys"},)
        assert [t.answer["content"] for t in c.turns if t.answer] == ["a" * 40, "b" * 8]
        assert c.turns[0].before == ({"role": "user", "content": "q1"},)

    @pytest.mark.parametrize(
        ("line", "reason"),
        [
            ("{nope", "not JSON"),
            ('{"messages": [{"role": "robot", "content": "x"}]}', "role must be one of"),
            ('{"messages": [{"role": "tool", "content": "x"}]}', "needs tool_call_id"),
            ('{"messages": [{"role": "user", "content": "x"}]}', "no assistant message"),
            ('{"messages": [{"role": "assistant"}]}', "needs content or tool_calls"),
            ('{"turns": []}', 'a "messages" list'),
        ],
    )
    def test_bad_lines_name_file_and_line(self, tmp_path: Path, line: str, reason: str) -> None:
        """A malformed record is a ConfigError FILE:LINE: reason (here: line 2)."""
        f = tmp_path / "bad.jsonl"
        f.write_text(json.dumps(openai_line(0)) + "\n" + line + "\n")
        with pytest.raises(ConfigError, match=rf"bad\.jsonl:2: .*{reason}"):
            TraceWorkload(TraceSpec(path=f))

    def test_holdout_is_kept_apart(self, tmp_path: Path) -> None:
        """holdout 0.2 of 10 conversations: the search replays 8, validation the other 2."""
        f = write_openai(tmp_path / "t.jsonl", 10)
        search = TraceWorkload(TraceSpec(path=f, holdout=0.2))
        held = TraceWorkload(TraceSpec(path=f, holdout=0.2, split="holdout"))
        assert len(search.conversations) == 8
        assert len(held.conversations) == 2
        tasks = {c.turns[0].before[0]["content"] for c in search.conversations}
        assert not tasks & {c.turns[0].before[0]["content"] for c in held.conversations}


def test_replay_sends_the_recorded_history(tmp_path: Path) -> None:
    """The second request's prompt is the recorded history with the recorded tool call (not
    the model's answer), and the tools are forwarded."""
    bodies: list[dict[str, object]] = []

    def handler(r: httpx.Request) -> httpx.Response:
        if r.url.path != "/v1/chat/completions":
            return httpx.Response(404)
        bodies.append(json.loads(r.content))
        sse = 'data: {"choices": [{"delta": {"content": "MODEL"}}]}\n\ndata: [DONE]\n\n'
        return httpx.Response(200, content=sse.encode())

    spec = TraceSpec(path=write_openai(tmp_path / "t.jsonl", 3), holdout=0.0,
                     warmup_conversations=0, conversations=3)  # fmt: skip
    measure(Endpoint("http://x", "m", reported_vram_mib=1.0), spec,
            transport=httpx.MockTransport(handler))  # fmt: skip
    assert len(bodies) == 9
    second = bodies[1]["messages"]
    assert isinstance(second, list)
    assert second[2]["tool_calls"][0]["id"] == "c0"
    assert second[3]["role"] == "tool"
    assert all("MODEL" not in json.dumps(m) for m in second)
    assert bodies[0]["tools"] == TOOLS


def test_the_shipped_trace_example_loads_and_splits() -> None:
    """objectives/agent_trace.yaml replays objectives/traces/example.jsonl (resolved against
    the objective file): six conversations with tool calls, four for the search and the last
    two held out for validation, each starting with the system prompt and a user turn."""
    from tests.conftest import ROOT
    from tuner.config import load_objective

    spec = load_objective(ROOT / "objectives" / "agent_trace.yaml").workload
    assert isinstance(spec, TraceSpec)
    assert spec.path == (ROOT / "objectives" / "traces" / "example.jsonl").resolve()
    search, holdout = TraceWorkload(spec), TraceWorkload(spec.held_out())
    first = search.conversation(0)
    assert first.tools
    assert [m["role"] for m in first.opening] == ["system"]
    assert [m["role"] for m in first.turns[0].before] == ["user"]

    def task(c: Conversation) -> str:
        return str(c.turns[0].before[0]["content"])

    # 4 search conversations: the last is the warm-up, never measured; the other 3 cycle.
    measured = [task(search.conversation(i)) for i in range(4)]
    warmup = task(search.conversation(-1))
    assert len(set(measured[:3])) == 3
    assert measured[3] == measured[0]
    assert warmup not in measured
    held = {task(holdout.conversation(i)) for i in range(-1, 2)}
    assert len(held) == 2
    assert not {*measured, warmup} & held


class TestCheckedBeforeDeploying:
    """check_trace: what would fail every trial is refused before any server starts."""

    def _spec(self, tmp_path: Path, lines: list[str], **kw: Any) -> TraceSpec:
        f = tmp_path / "t.jsonl"
        f.write_text("\n".join(lines) + "\n")
        return TraceSpec(path=f, holdout=0.0, **kw)

    def _ok(self, n: int = 1) -> str:
        return json.dumps({"messages": [{"role": "system", "content": "s"},
                                        {"role": "user", "content": "u" * n},
                                        {"role": "assistant", "content": "a"}]})  # fmt: skip

    @pytest.mark.parametrize(
        ("line", "said"),
        [
            ('{"messages": [{"role": "user", "content": "x"},', "not JSON: Expecting value"),
            (json.dumps({"messages": [{"role": "robot", "content": "x"}]}), "role must be"),
            (json.dumps({"messages": [{"role": "system", "content": "s"},
                                      {"role": "assistant", "content": "a"}]}),
             "no user message before the first answer"),
            (json.dumps({"messages": []}), "no assistant message"),
        ],
    )  # fmt: skip
    def test_a_bad_line_is_file_line_reason(self, tmp_path: Path, line: str, said: str) -> None:
        spec = self._spec(tmp_path, [self._ok(), line])
        with pytest.raises(ConfigError) as exc:
            check_trace(spec, 4096)
        assert str(exc.value).startswith(f"{spec.path}:2: ")
        assert said in str(exc.value)

    def test_the_json_error_names_its_column(self, tmp_path: Path) -> None:
        spec = self._spec(tmp_path, ['{"messages": [}'])
        with pytest.raises(ConfigError, match=r":1: not JSON: .*\(column 15\)"):
            check_trace(spec, 4096)

    def test_an_empty_trace(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="holds no conversation"):
            check_trace(self._spec(tmp_path, [""]), 4096)

    def test_a_conversation_longer_than_the_context(self, tmp_path: Path) -> None:
        spec = self._spec(tmp_path, [self._ok(), self._ok(), self._ok(40_000)])
        check_trace(spec, 20_000)  # 10 000 tokens: fits
        with pytest.raises(ConfigError, match=r":3: the conversation needs about 100\d\d tokens"):
            check_trace(spec, 8_000)

    def test_an_empty_holdout_split_is_refused_before_the_search(self, tmp_path: Path) -> None:
        """Validation replays the held-out split: one that is empty must not surface only
        after the search."""
        f = tmp_path / "t.jsonl"
        f.write_text(self._ok() + "\n")
        with pytest.raises(ConfigError, match="holdout split is empty"):
            check_trace(TraceSpec(path=f, holdout=0.2), 4096)


def test_a_bad_trace_stops_the_study_before_any_deployment(
    tmp_path: Path, space: Any, objective: Any
) -> None:
    """The runner's check reads the whole trace first: one line, no server started, no trial."""
    from tuner.study import RunSettings, StudyPaths, StudyRunner
    from tuner.testing import fake_profile, study_starts

    f = tmp_path / "t.jsonl"
    f.write_text(write_openai(tmp_path / "ok.jsonl", 3).read_text() + '{"messages": [\n')
    obj = objective.model_copy(update={"workload": TraceSpec(path=f, holdout=0.0)})
    runner = StudyRunner(paths=StudyPaths.create("s", tmp_path / "studies"), space=space,
                         seeds=(), objective=obj, profile=fake_profile(),
                         settings=RunSettings(n_trials=2))  # fmt: skip
    with pytest.raises(ConfigError, match=r"t\.jsonl:4: not JSON"):
        runner.run()
    assert study_starts(tmp_path / "studies" / "s") == 0


def test_repeats_are_said_and_the_warmup_is_never_measured(tmp_path: Path) -> None:
    """A split of 3 with 1 warm-up, 5 conversations asked: 2 distinct ones measured, cycled;
    the measurement, the CLI line and the report's quality warnings say so."""
    from tuner.cli._common import trial_line
    from tuner.study import TrialOutcome

    sent: list[str] = []

    def handler(r: httpx.Request) -> httpx.Response:
        if r.url.path != "/v1/chat/completions":
            return httpx.Response(404)
        sent.append(json.dumps(json.loads(r.content)["messages"][1]))
        sse = 'data: {"choices": [{"delta": {"content": "MODEL"}}]}\n\ndata: [DONE]\n\n'
        return httpx.Response(200, content=sse.encode())

    spec = TraceSpec(path=write_openai(tmp_path / "t.jsonl", 3), holdout=0.0,
                     warmup_conversations=1, conversations=5)  # fmt: skip
    m = measure(Endpoint("http://x", "m", reported_vram_mib=1.0), spec,
                transport=httpx.MockTransport(handler))  # fmt: skip
    summary = m.summary()
    assert summary["conversations"] == 5
    assert summary["distinct_conversations"] == 2
    warmup_opening = sent[0]
    assert warmup_opening not in sent[3:]  # 3 turns of warm-up, then only the other two
    attrs = {"conversations": 5, "distinct_conversations": 2}
    line = trial_line(TrialOutcome(0, {}, "complete", None, attrs=attrs))
    assert "(5 conversations, 2 distinct)" in line


def test_the_report_says_which_trace_split_and_distinct_conversations(
    tmp_path: Path, space: Any, objective: Any
) -> None:
    from tuner.report import write_report
    from tuner.study import RunSettings, StudyPaths, StudyRunner, load_study
    from tuner.testing import fake_profile

    spec = TraceSpec(path=write_openai(tmp_path / "t.jsonl", 5), holdout=0.4, conversations=3)
    obj = objective.model_copy(update={"workload": spec})
    paths = StudyPaths.create("s", tmp_path / "studies")
    StudyRunner(paths=paths, space=space, seeds=(), objective=obj, profile=fake_profile(),
                settings=RunSettings(n_trials=1)).run()  # fmt: skip
    md = write_report(load_study(paths), tmp_path / "r")["report_md"].read_text()
    assert f"Workload: the trace {spec.path} (openai), its search split (the first 60%" in md
    assert "distinct conversations measured per trial: 2." in md
    assert "3 conversations measured from a trace split of 2 distinct ones" in md
