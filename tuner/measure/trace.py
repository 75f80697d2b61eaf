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

__all__ = ["TraceWorkload", "check_trace", "load_trace"]

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


Recorded = tuple[list[Message], list[dict[str, Any]] | None]


def load_trace(path: Path, fmt: str) -> list[Recorded]:
    """Every conversation of the trace file; ConfigError ``FILE:LINE: reason`` on a bad one."""
    return [rec for _, rec in _load(path, fmt)]


def _load(path: Path, fmt: str) -> list[tuple[int, Recorded]]:
    """Every conversation of the trace file with its line; ConfigError ``FILE:LINE: reason``
    on a bad one (a JSON error with its column)."""
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
            raise ConfigError(f"not JSON: {exc.msg} (column {exc.colno})", file=path,
                              line=exc.lineno) from exc  # fmt: skip
    else:
        docs = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    docs.append((n, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"not JSON: {exc.msg} (column {exc.colno})", file=path,
                                      line=n) from exc  # fmt: skip
    out = []
    for n, doc in docs:
        try:
            messages, tools = parse(doc, f"{path}:{n}")
        except ValueError as exc:
            raise ConfigError(str(exc), file=path, line=n) from exc
        if not any(m["role"] == "assistant" for m in messages):
            raise ConfigError("no assistant message: nothing to replay", file=path, line=n)
        first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
        if not any(m["role"] in ("user", "tool") for m in messages[:first]):
            raise ConfigError(
                "no user message before the first answer: its first request would be the "
                "system prompt alone",
                file=path,
                line=n,
            )
        out.append((n, (messages, tools)))
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


def check_trace(spec: TraceSpec, max_model_len: int | None) -> None:
    """Before any deployment: every line of the trace parses, both splits hold conversations,
    and no conversation's longest request (its history before the last answer, at about 4
    characters per token, plus that answer) outgrows ``max_model_len``; ConfigError
    ``FILE:LINE: reason`` otherwise."""
    loaded = _load(spec.path, spec.format)
    # Both splits (holdout 0: the search's only; such a trace cannot be validated anyway).
    for split in ("search", "holdout") if spec.holdout > 0 else ("search",):
        TraceWorkload(spec.model_copy(update={"split": split}), loaded=[r for _, r in loaded])
    if not max_model_len:
        return
    for n, (messages, _tools) in loaded:
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        tokens = len(json.dumps(messages[:last])) // CHARS_PER_TOKEN + _length(
            messages[last], spec.max_tokens
        )
        if tokens > max_model_len:
            raise ConfigError(
                f"the conversation needs about {tokens} tokens at its last answer (4 "
                f"characters each) but max_model_len is {max_model_len}: leave it out or "
                "raise max_model_len",
                file=spec.path,
                line=n,
            )


class TraceWorkload:
    """The trace's conversations of one split, cycled when more are asked for than it holds."""

    def __init__(self, spec: TraceSpec, loaded: list[Recorded] | None = None) -> None:
        """The conversations of ``spec``'s split: the last ``holdout`` share for validation, the
        rest for the search; a ConfigError when the split is empty. ``loaded``: the file's
        conversations, already read."""
        self.spec = spec
        recorded = loaded if loaded is not None else load_trace(spec.path, spec.format)
        convs = [_conversation(m, t, spec.max_tokens) for m, t in recorded]
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
        # The warm-up conversations come from the end of the split; the measured ones cycle
        # over the rest, so a warm-up is never measured again (unless it is all there is).
        warm = min(spec.warmup_conversations, len(chosen) - 1)
        self.measured = chosen[: len(chosen) - warm]

    @property
    def distinct(self) -> int | None:
        """The split's conversations that are measured (the warm-up's left out)."""
        return len(self.measured)

    @property
    def probe_tools(self) -> list[dict[str, Any]] | None:
        """None: a recorded conversation brings its own tools."""
        return None

    def conversation(self, index: int) -> Conversation:
        """Conversation ``index`` of the split (negative: warm-up, taken from the end)."""
        if index < 0:
            return self.conversations[index % len(self.conversations)]
        return self.measured[index % len(self.measured)]
