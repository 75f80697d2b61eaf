"""Conversations as data: what every workload kind produces and the load runner consumes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Conversation", "Message", "Turn", "Workload"]

Message = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Turn:
    """One request of a conversation."""

    before: tuple[Message, ...]  # appended to the history before the request
    answer: Message | None  # appended after it: the recorded answer (None: the model's)
    max_tokens: int


@dataclass(frozen=True, slots=True)
class Conversation:
    """Opening messages (system prompt, ...), turns, tools, and the shared prefix's identity."""

    opening: tuple[Message, ...]
    turns: tuple[Turn, ...]
    tools: list[dict[str, Any]] | None = None
    prefix_key: str = ""  # same key: the same opening prefix (a first turn may find it cached)


class Workload(Protocol):
    """A generator of conversations; ``index`` < 0 are warm-up conversations."""

    def conversation(self, index: int) -> Conversation: ...

    @property
    def probe_tools(self) -> list[dict[str, Any]] | None:
        """Tool definitions the answer guard's tool-call requests offer (None: the
        conversations' own, if any)."""
        ...

    @property
    def distinct(self) -> int | None:
        """How many distinct conversations the measured ones cycle over (None: unlimited)."""
        ...
