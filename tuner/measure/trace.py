"""``trace`` workload: the user's own recorded conversations, replayed turn by turn.

Formats:

- ``openai``: JSONL, one ``{"messages": [...], "tools": [...]}`` per line; roles system, user,
  assistant (``content`` and/or ``tool_calls``) and tool (with ``tool_call_id``).
- ``sharegpt``: a JSON list, or JSONL, of ``{"conversations": [{"from": ..., "value": ...}]}``
  with ``from`` one of system, human/user, gpt/assistant, tool.

Each recorded assistant message is one request: its prompt is the recorded history before it,
and the recorded message (not the model's answer) is appended afterwards, so every prefix is
exactly the recorded one. The request's output length follows the recorded answer (about 4
characters per token, capped at ``max_tokens``) and is forced with ``ignore_eos``. A bad line is
a ConfigError ``FILE:LINE: reason``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tuner.config.workload import TraceSpec
from tuner.errors import ConfigError
from tuner.measure._conversation import Conversation, Message, Turn

__all__ = ["TraceWorkload", "load_trace"]

_ROLES = {"system", "user", "assistant", "tool"}
_SHAREGPT = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
             "assistant": "assistant", "tool": "tool", "function": "tool"}  # fmt: skip
CHARS_PER_TOKEN = 4  # for the output length of a recorded answer; the server counts exactly


def _openai(doc: Any, where: str) -> tuple[list[Message], list[dict[str, Any]] | None]:
    """The messages and tools of one OpenAI chat line, checked: known roles, tool results with
    their call id, assistant messages with content or tool calls."""
    if not isinstance(doc, dict) or not isinstance(doc.get("messages"), list):
        raise ValueError('expected an object with a "messages" list')
    messages: list[Message] = []
    for i, m in enumerate(doc["messages"]):
        if not isinstance(m, dict) or m.get("role") not in _ROLES:
            raise ValueError(f"messages[{i}]: role must be one of {sorted(_ROLES)}")
        if m["role"] == "tool" and "tool_call_id" not in m:
            raise ValueError(f"messages[{i}]: a tool message needs tool_call_id")
        if m["role"] == "assistant" and not (m.get("content") or m.get("tool_calls")):
            raise ValueError(f"messages[{i}]: an assistant message needs content or tool_calls")
        messages.append(dict(m))
    tools = doc.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise ValueError('"tools" must be a list')
    return messages, tools


def _sharegpt(doc: Any, where: str) -> tuple[list[Message], list[dict[str, Any]] | None]:
    """The messages of one ShareGPT record, its roles mapped to OpenAI's (human: user, gpt:
    assistant)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("conversations"), list):
        raise ValueError('expected an object with a "conversations" list')
    messages: list[Message] = []
    for i, m in enumerate(doc["conversations"]):
        role = _SHAREGPT.get(str(m.get("from"))) if isinstance(m, dict) else None
        if role is None or not isinstance(m.get("value"), str):
            raise ValueError(f"conversations[{i}]: needs from (one of {sorted(_SHAREGPT)}) "
                             "and a string value")  # fmt: skip
        msg: Message = {"role": role, "content": m["value"]}
        if role == "tool":
            msg["tool_call_id"] = str(m.get("tool_call_id", f"call_{i}"))
        messages.append(msg)
    return messages, None


def load_trace(path: Path, fmt: str) -> list[tuple[list[Message], list[dict[str, Any]] | None]]:
    """Every conversation of the trace file; ConfigError ``FILE:LINE: reason`` on a bad one."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("trace file not found", file=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the trace: {exc}", file=path) from exc
    parse = _openai if fmt == "openai" else _sharegpt
    stripped = text.lstrip()
    if fmt == "sharegpt" and stripped.startswith("["):  # one JSON list
        try:
            docs = [(1, d) for d in json.loads(text)]
        except json.JSONDecodeError as exc:
            raise ConfigError(f"not JSON: {exc.msg}", file=path, line=exc.lineno) from exc
    else:
        docs = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    docs.append((n, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"not JSON: {exc.msg}", file=path, line=n) from exc
    out = []
    for n, doc in docs:
        try:
            messages, tools = parse(doc, f"{path}:{n}")
        except ValueError as exc:
            raise ConfigError(str(exc), file=path, line=n) from exc
        if not any(m["role"] == "assistant" for m in messages):
            raise ConfigError("no assistant message: nothing to replay", file=path, line=n)
        out.append((messages, tools))
    if not out:
        raise ConfigError("the trace holds no conversation", file=path)
    return out


def _length(answer: Message, cap: int) -> int:
    """The output length of a recorded answer in tokens (about 4 characters each), capped."""
    text = str(answer.get("content") or "") + json.dumps(answer.get("tool_calls") or "")
    return max(1, min(cap, len(text) // CHARS_PER_TOKEN))


def _conversation(messages: list[Message], tools: Any, cap: int) -> Conversation:
    """Split recorded messages into an opening and one turn per assistant message."""
    first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
    opening_end = next((i for i, m in enumerate(messages) if m["role"] != "system"), first)
    opening = tuple(messages[:opening_end])
    turns: list[Turn] = []
    pending: list[Message] = list(messages[opening_end:first])
    for m in messages[first:]:
        if m["role"] == "assistant":
            turns.append(Turn(tuple(pending), m, _length(m, cap)))
            pending = []
        else:
            pending.append(m)
    key = hashlib.sha256(json.dumps(opening, sort_keys=True).encode()).hexdigest()
    return Conversation(opening, tuple(turns), tools, prefix_key=key)


class TraceWorkload:
    """The trace's conversations of one split, cycled when more are asked for than it holds."""

    def __init__(self, spec: TraceSpec) -> None:
        """The conversations of ``spec``'s split: the last ``holdout`` share for validation, the
        rest for the search; a ConfigError when the split is empty."""
        self.spec = spec
        convs = [
            _conversation(m, t, spec.max_tokens) for m, t in load_trace(spec.path, spec.format)
        ]
        n_holdout = int(len(convs) * spec.holdout)
        # The last `holdout` share is kept for validation, so the search never sees it.
        search, holdout = convs[: len(convs) - n_holdout], convs[len(convs) - n_holdout :]
        chosen = holdout if spec.split == "holdout" else search
        if not chosen:
            raise ConfigError(
                f"the trace's {spec.split} split is empty ({len(convs)} conversations, "
                f"holdout {spec.holdout:g})",
                file=spec.path,
            )
        self.conversations = chosen

    def conversation(self, index: int) -> Conversation:
        """Conversation ``index`` of the split (negative: warm-up, taken from the end)."""
        return self.conversations[index % len(self.conversations)]
