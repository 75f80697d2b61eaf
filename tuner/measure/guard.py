"""The answer guard: did this configuration change what the model answers?

Latency figures cannot show that KV-cache precision, speculation or a scheduler change altered
the model's output. After the load, every trial sends a few fixed greedy requests (temperature
0, a fixed seed, one at a time on the idle server) whose prompts come from the workload, and
keeps the answers' token ids (vLLM's ``return_token_ids``) and, when the workload has tools, the
tool each tool-call request named. The study compares them with the baseline deployment's
(:func:`compare`): the share of output tokens identical up to the first difference, and the
share of the baseline's parsed tool calls this trial reproduced (parsed, same tool).

Tool-call requests use ``tool_choice: required``, which vLLM serves only with a
``--tool-call-parser``; without one the server's 400 is kept as the reason tool calls were not
compared and the request is sent again without tools.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from tuner.answers import Answer
from tuner.config.objective import Guard
from tuner.config.workload import SyntheticAgentSpec, TraceSpec
from tuner.errors import MeasureError
from tuner.measure._conversation import Message, Workload
from tuner.measure.workload import make_workload

__all__ = ["Probe", "answers", "ask", "probes"]

# Probe prompts come from conversations far beyond any measured index: prompts no measured
# request sent, so that no configuration answers them from a warmer cache than another.
_FIRST = 1_000_000


@dataclass(frozen=True, slots=True)
class Probe:
    """One guard request: the messages, and the tool definitions when it asks for a tool call."""

    messages: tuple[Message, ...]
    tools: list[dict[str, Any]] | None = None


def probes(workload: Workload, n: int, tools: list[dict[str, Any]] | None) -> list[Probe]:
    """``n`` probes from conversations of ``workload`` no measured request used: each the
    conversation's opening and its turns up to the first the model must answer itself (a
    trace's recorded answers are history). Every other probe asks for a tool call when the
    workload has ``tools`` (a trace's conversation may bring its own)."""
    out: list[Probe] = []
    for i in range(n):
        c = workload.conversation(_FIRST + i)
        messages: list[Message] = list(c.opening)
        for turn in c.turns:
            messages += turn.before
            if turn.answer is None:
                break
            messages.append(turn.answer)
        while messages and messages[-1].get("role") == "assistant":
            messages.pop()  # a conversation that ends on an answer: ask for that answer again
        defs = c.tools or tools
        out.append(Probe(tuple(messages), defs if defs and i % 2 == 1 else None))
    return out


def answers(
    base_url: str, model: str, spec: SyntheticAgentSpec | TraceSpec, guard: Guard
) -> list[Answer]:
    """The guard's answers for the workload ``spec`` (its prompts at the spec's own token
    estimate: the same text on every deployment, whatever the tokenizer measured)."""
    workload = make_workload(spec)
    asked = probes(workload, guard.requests, workload.probe_tools)
    return ask(base_url, model, asked, max_tokens=guard.max_tokens, seed=guard.seed)


def ask(
    base_url: str,
    model: str,
    asked: Sequence[Probe],
    *,
    max_tokens: int,
    seed: int,
    timeout_s: float = 120.0,
) -> list[Answer]:
    """Send each probe greedily, one at a time; their answers. MeasureError when the server
    fails a request that asks for no tool call (a tool-call request it refuses is sent again
    without tools, the refusal kept as the answer's note)."""
    out: list[Answer] = []
    with httpx.Client(timeout=timeout_s) as client:
        for probe in asked:
            note = ""
            body: dict[str, Any] = {
                "model": model,
                "messages": list(probe.messages),
                "max_tokens": max_tokens,
                "temperature": 0.0,
                "seed": seed,
                "return_token_ids": True,
            }
            if probe.tools:
                reply = _post(client, base_url, {**body, "tools": probe.tools,
                                                 "tool_choice": "required"})  # fmt: skip
                if isinstance(reply, str):
                    note = reply
                else:
                    out.append(_answer(reply, probe.tools))
                    continue
            reply = _post(client, base_url, body)
            if isinstance(reply, str):
                raise MeasureError(f"guard request refused: {reply}")
            out.append(_answer(reply, None, note=note))
    return out


def _post(client: httpx.Client, base_url: str, body: dict[str, Any]) -> dict[str, Any] | str:
    """The server's JSON answer, or the message of its 4xx refusal."""
    try:
        resp = client.post(f"{base_url}/v1/chat/completions", json=body)
    except httpx.HTTPError as exc:
        raise MeasureError(f"guard request failed: {exc}") from exc
    if 400 <= resp.status_code < 500:
        try:
            return str(resp.json()["error"]["message"])[:200]
        except (ValueError, KeyError, TypeError):
            return resp.text[:200]
    if resp.status_code != 200:
        raise MeasureError(f"HTTP {resp.status_code} from a guard request: {resp.text[:200]}")
    doc = resp.json()
    if not isinstance(doc, dict):
        raise MeasureError("guard request: the answer is not a JSON object")
    return doc


def _answer(doc: dict[str, Any], tools: list[dict[str, Any]] | None, note: str = "") -> Answer:
    """The token ids of a non-streamed answer and, when it was asked for a tool call (with
    ``tools``), the tool its first call named if that call parses (a known tool, JSON
    arguments); ``note``: why a tool call was not asked."""
    try:
        choice = doc["choices"][0]
    except (KeyError, IndexError, TypeError) as exc:
        raise MeasureError("guard request: no choice in the answer") from exc
    ids = choice.get("token_ids")
    if ids is None:
        raise MeasureError(
            "guard request: the server returned no token_ids (vLLM's return_token_ids; set "
            "guard: null in the objective file for a server without it)"
        )
    tool = None
    calls = (choice.get("message") or {}).get("tool_calls") or []
    if tools is not None and calls:
        fn = calls[0].get("function") or {}
        known = {(t.get("function") or {}).get("name") for t in tools}
        try:
            json.loads(fn.get("arguments") or "")
            tool = fn.get("name") if fn.get("name") in known else None
        except (ValueError, TypeError):
            tool = None
    return Answer(tuple(int(x) for x in ids), tool, asked_tool=tools is not None, note=note)
