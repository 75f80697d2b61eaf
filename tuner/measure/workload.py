"""The workload seam: conversations as data, one generator per ``workload.kind``.

A :class:`Conversation` is its opening messages and its turns; each :class:`Turn` says what is
appended before the request, and what is appended after it (the recorded answer of a trace, or
``None``: the model's own answer). :data:`WORKLOADS` maps each kind to its generator:
``synthetic_agent`` (:class:`AgentWorkload`, below) and ``trace`` (``tuner.measure.trace``).

The synthetic agent's texts are generated deterministically from the workload seed, so every
trial of a study sends the same conversations (common random numbers: candidates differ by
their flags, not by their load). With ``salt_system_prompt`` a per-conversation
salt opens the system prompt, so every first turn is a prefix the server has never seen.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from tuner.config.workload import SyntheticAgentSpec, TraceSpec
from tuner.measure._conversation import Conversation, Message, Turn, Workload
from tuner.measure.trace import TraceWorkload, check_trace

__all__ = [
    "WORKLOADS",
    "AgentWorkload",
    "Conversation",
    "Turn",
    "Workload",
    "check_fits",
    "make_workload",
    "vocabulary_sample",
]

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
    """Builds the messages of each turn; see :meth:`system_prompt` and :meth:`user_message`.

    ``tokens_per_word`` is the server tokenizer's ratio for this vocabulary (measured with
    ``/tokenize`` when the trial starts); None uses the spec's estimate.
    """

    spec: SyntheticAgentSpec
    tokens_per_word: float | None = None

    @property
    def distinct(self) -> int | None:
        """None: every conversation is generated anew, none repeats."""
        return None

    @property
    def probe_tools(self) -> list[dict[str, Any]] | None:
        """The agent's tool definitions (the system prompt lists them), when it has tools."""
        return [dict(t) for t in self.tools()] if self.spec.tools else None

    @property
    def ratio(self) -> float:
        """Tokens per word: the server's own (measured at the start), else the spec's estimate."""
        return self.tokens_per_word or self.spec.tokens_per_word

    def _words(self, tokens: int) -> int:
        """How many words make ``tokens`` tokens."""
        return max(1, round(tokens / self.ratio))

    def tool_tokens(self, conversation: int, turn: int) -> int:
        """The tool result's size before ``turn`` in tokens (0: none)."""
        spec = self.spec
        if spec.tool_result_words:
            return round(spec.tool_result_words * self.ratio)
        t = spec.tool_result_tokens
        if isinstance(t, tuple):
            return self._rng("size", conversation, turn).randint(*t)
        return t

    def conversation(self, index: int) -> Conversation:
        """Conversation ``index``: system prompt, then per turn a tool result and a user line
        (until ``turns``, or until the next prompt would pass ``context_tokens``)."""
        spec = self.spec
        # A salt drawn from the seed: a prefix no server has seen, the same text (and token
        # count) on every deployment of every candidate.
        salt = (
            f"{self._rng('salt', index).getrandbits(128):032x}"
            if spec.salt_system_prompt
            else "shared"
        )
        system = {"role": "system", "content": self.system_prompt(salt)}
        context = self.estimate_tokens(system["content"])
        turns: list[Turn] = []
        for turn in range(spec.turns):
            before: list[Message] = []
            if turn and (size := self.tool_tokens(index, turn)):
                before.append({"role": "user", "content": self.tool_result(index, turn, size)})
            before.append({"role": "user", "content": self.user_message(index, turn)})
            grown = context + sum(self.estimate_tokens(m["content"]) for m in before)
            if turns and spec.context_tokens and grown + spec.max_tokens > spec.context_tokens:
                break
            context = grown + spec.max_tokens  # the answer joins the history
            turns.append(Turn(tuple(before), None, spec.max_tokens))
        return Conversation((system,), tuple(turns), None, prefix_key=salt)

    def estimate_tokens(self, text: str) -> int:
        """Tokens of a text this workload generated (words x the tokenizer's ratio)."""
        return round(len(text.split()) * self.ratio)

    def largest_prompt(self) -> int:
        """Estimated tokens of the longest request (prompt + output) any conversation sends."""
        worst = 0
        for index in range(3):
            c = self.conversation(index)
            size = sum(self.estimate_tokens(str(m["content"])) for m in c.opening)
            for t in c.turns:
                size += sum(self.estimate_tokens(str(m["content"])) for m in t.before)
                worst = max(worst, size + t.max_tokens)
                size += t.max_tokens
        return worst

    def _rng(self, *salt: object) -> random.Random:
        """A random generator for one part of the workload, the same for the same seed and
        ``salt``."""
        return random.Random(json.dumps([self.spec.seed, *salt]))

    def _text(self, rng: random.Random, n: int) -> str:
        """``n`` words of filler text."""
        return " ".join(rng.choice(_WORDS) for _ in range(n))

    def tools(self) -> list[dict[str, object]]:
        """The agent's tool definitions (OpenAI function schemas), the same for every
        conversation of a seed."""
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

    def tool_result(self, conversation: int, turn: int, tokens: int) -> str:
        """A tool's output appended before turn ``turn``, about ``tokens`` tokens long."""
        rng = self._rng("tool", conversation, turn)
        words = self.spec.tool_result_words or self._words(tokens)
        return f"Tool result {turn}: {self._text(rng, words)}"

    def user_message(self, conversation: int, turn: int) -> str:
        """The user's message of ``turn`` in ``conversation``: each conversation its own task
        and its own lines, so that a first turn after a shared system prompt is a MISS on its
        own words (were every conversation to open with the same line, the prefix cache would
        hold all of it after the first conversation). The same text on every deployment."""
        rng = self._rng("user", conversation, turn)
        return f"Task {conversation} turn {turn + 1}: {self._text(rng, self.spec.user_words)}"


WORKLOADS: dict[str, Any] = {"synthetic_agent": AgentWorkload, "trace": TraceWorkload}


def make_workload(
    spec: SyntheticAgentSpec | TraceSpec, tokens_per_word: float | None = None
) -> Workload:
    """The generator for ``spec.kind`` (``tokens_per_word``: the server tokenizer's ratio)."""
    if isinstance(spec, SyntheticAgentSpec):
        return AgentWorkload(spec, tokens_per_word)
    factory = WORKLOADS[spec.kind]
    workload: Workload = factory(spec)
    return workload


def check_fits(spec: SyntheticAgentSpec | TraceSpec, max_model_len: int | None) -> str | None:
    """Why the workload cannot fit ``max_model_len`` (estimated tokens), or None when it fits.

    Checked before any server starts: a conversation that outgrows the context would only
    give HTTP 400s in every trial.
    """
    if isinstance(spec, TraceSpec):
        check_trace(spec, max_model_len)  # every line, both splits, each length: FILE:LINE
        return None
    if not max_model_len:
        return None
    if spec.context_tokens and spec.context_tokens > max_model_len:
        return (
            f"workload.context_tokens {spec.context_tokens} is more than the server's "
            f"max_model_len {max_model_len}"
        )
    worst = AgentWorkload(spec).largest_prompt()
    if worst > max_model_len:
        return (
            f"the workload's longest request needs about {worst} tokens (system prompt, "
            f"{spec.turns} turns of tool results and answers, at {spec.tokens_per_word} tokens "
            f"per word) but max_model_len is {max_model_len}: lower turns or the tool result "
            "size, or set context_tokens"
        )
    return None


def vocabulary_sample(words: int = 2000) -> str:
    """A text of the synthetic vocabulary, for measuring a tokenizer's tokens per word."""
    rng = random.Random(0)
    return " ".join(rng.choice(_WORDS) for _ in range(words))
