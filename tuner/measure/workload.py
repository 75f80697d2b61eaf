"""The workload seam: conversations as data, one generator per ``workload.kind``.

A :class:`Conversation` is its opening messages and its turns; each :class:`Turn` says what is
appended before the request, and what is appended after it (the recorded answer of a trace, or
``None``: the model's own answer). :data:`WORKLOADS` maps each kind to its generator:
``synthetic_agent`` (:class:`AgentWorkload`, below) and ``trace`` (``tuner.measure.trace``).

The synthetic agent's texts are generated deterministically from the workload seed, so every
trial of a study sends the same conversations. With ``salt_system_prompt`` a per-conversation
salt opens the system prompt, so every first turn is a prefix the server has never seen.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from typing import Any

from tuner.config.workload import SyntheticAgentSpec, TraceSpec
from tuner.measure._conversation import Conversation, Message, Turn, Workload
from tuner.measure.trace import TraceWorkload

__all__ = ["WORKLOADS", "AgentWorkload", "Conversation", "Turn", "Workload", "make_workload"]

_WORDS = [
    "tool",
    "call",
    "function",
    "argument",
    "schema",
    "return",
    "value",
    "string",
    "integer",
    "search",
    "file",
    "read",
    "write",
    "user",
    "agent",
    "plan",
    "step",
    "result",
    "error",
    "retry",
    "context",
    "memory",
    "token",
    "cache",
    "prefix",
    "model",
    "request",
    "repository",
    "branch",
    "commit",
    "test",
    "build",
    "deploy",
    "service",
    "container",
    "log",
    "metric",
    "latency",
    "budget",
]
_VERBS = ("search", "read", "write", "list", "run", "fetch", "update", "delete", "summarize")
_NOUNS = ("file", "issue", "log", "metric", "ticket", "page", "table", "branch", "container")


@dataclass(frozen=True, slots=True)
class AgentWorkload:
    """Builds the messages of each turn; see :meth:`system_prompt` and :meth:`user_message`."""

    spec: SyntheticAgentSpec

    def conversation(self, index: int) -> Conversation:
        """Conversation ``index``: system prompt, then per turn a tool result and a user line."""
        spec = self.spec
        salt = uuid.uuid4().hex if spec.salt_system_prompt else "shared"
        turns = []
        for turn in range(spec.turns):
            before: list[Message] = []
            if turn and spec.tool_result_words:
                before.append({"role": "user", "content": self.tool_result(index, turn)})
            before.append({"role": "user", "content": self.user_message(index, turn)})
            turns.append(Turn(tuple(before), None, spec.max_tokens))
        system = {"role": "system", "content": self.system_prompt(salt)}
        return Conversation((system,), tuple(turns), None, prefix_key=salt)

    def _rng(self, *salt: object) -> random.Random:
        return random.Random(json.dumps([self.spec.seed, *salt]))

    def _text(self, rng: random.Random, n: int) -> str:
        return " ".join(rng.choice(_WORDS) for _ in range(n))

    def tools(self) -> list[dict[str, object]]:
        rng = self._rng("tools")
        out: list[dict[str, object]] = []
        for i in range(self.spec.tools):
            name = f"{_VERBS[i % len(_VERBS)]}_{_NOUNS[(i * 7) % len(_NOUNS)]}_{i}"
            out.append(
                {
                    "type": "function",
                    "function": {
                        "name": name,
                        "description": self._text(rng, 20),
                        "parameters": {
                            "type": "object",
                            "properties": {
                                "query": {"type": "string", "description": self._text(rng, 8)},
                                "limit": {"type": "integer", "description": self._text(rng, 6)},
                            },
                            "required": ["query"],
                        },
                    },
                }
            )
        return out

    def system_prompt(self, salt: str) -> str:
        """Salt first (never-seen prefix), then instructions and tool definitions."""
        rng = self._rng("system")
        instructions = self._text(rng, self.spec.system_prompt_words)
        tools = json.dumps(self.tools(), separators=(",", ":"))
        return (
            f"Session {salt}.\nYou are a software agent. Use the tools below when needed.\n"
            f"# Tools\n{tools}\n# Instructions\n{instructions}"
        )

    def tool_result(self, conversation: int, turn: int) -> str:
        """A tool's output appended before turn ``turn`` (``tool_result_words`` words)."""
        rng = self._rng("tool", conversation, turn)
        return f"Tool result {turn}: {self._text(rng, self.spec.tool_result_words)}"

    def user_message(self, conversation: int, turn: int) -> str:
        """The user's message of ``turn`` (the same text per turn index in every conversation)."""
        rng = self._rng("user", turn)  # same text per turn index in every conversation
        return f"Turn {turn + 1}: {self._text(rng, self.spec.user_words)}"


WORKLOADS: dict[str, Any] = {"synthetic_agent": AgentWorkload, "trace": TraceWorkload}


def make_workload(spec: SyntheticAgentSpec | TraceSpec) -> Workload:
    """The generator for ``spec.kind``."""
    factory = WORKLOADS[spec.kind]
    workload: Workload = factory(spec)
    return workload
