"""The trace workload: both formats, bad lines with FILE:LINE, splits, and replay semantics
(recorded history as the prompt, recorded answers appended, tools forwarded)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tuner.config import TraceSpec
from tuner.errors import ConfigError
from tuner.measure import measure
from tuner.measure._conversation import Conversation
from tuner.measure.trace import TraceWorkload
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

    ids = {task(search.conversation(i)) for i in range(4)}
    held = {task(holdout.conversation(i)) for i in range(2)}
    assert len(ids) == 4
    assert len(held) == 2
    assert not ids & held
