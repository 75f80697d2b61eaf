"""The multi-turn agent workload: a long system prompt with tool definitions, growing history.

Texts are generated deterministically from the workload seed, so every trial of a study sends
the same conversations. Only the salt differs: it opens the system prompt, so the first turn of
every conversation is a prefix the server has never seen (a true cache MISS).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from tuner.config.objective import WorkloadSpec

__all__ = ["AgentWorkload"]

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

    spec: WorkloadSpec

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
