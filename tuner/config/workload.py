"""The workload section of an objective file: what is sent, and under which load.

``workload.kind`` picks the generator (``tuner.measure.workload.WORKLOADS`` holds one class per
kind): ``synthetic_agent`` builds agent conversations from a seed, ``trace`` replays the user's
own recorded conversations. Every kind shares the load settings of :class:`LoadSpec`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from tuner.config._yaml import StrictModel

__all__ = [
    "LoadSpec",
    "SyntheticAgentSpec",
    "TraceSpec",
    "WorkloadConfig",
    "WorkloadSpec",
    "held_out",
]


class LoadSpec(StrictModel):
    """How conversations are sent: how many, how many at once, bounds, failure thresholds."""

    conversations: int = Field(default=3, ge=3)  # measured (at least)
    warmup_conversations: int = Field(default=1, ge=0)  # excluded from the results
    temperature: float = 0.0
    ignore_eos: bool = True  # same number of output tokens in every configuration
    request_timeout_s: float = Field(default=300.0, gt=0)
    seed: int = 7
    # Caps of adaptive measurement (objectives with `precision`): at most this many measured
    # conversations / seconds of measurement. Without them, `conversations` is also the cap.
    max_conversations: int | None = Field(default=None, ge=1)
    max_seconds: float | None = Field(default=None, gt=0)
    # The search's early stop: a trial already behind a front point beyond the noise on every
    # objective stops measuring after this many conversations (default: half of
    # `conversations`, at least 2), keeping its figures (stop_reason: dominated).
    decided_after: int | None = Field(default=None, ge=1)
    # Load: C conversations in flight (closed loop; a new one starts as one ends), their
    # starts staggered so that the first turns do not arrive as one burst.
    concurrency: int = Field(default=1, ge=1)
    stagger_s: float = Field(default=0.25, ge=0)
    think_time_s: float = Field(default=0.0, ge=0)  # between a turn's answer and the next turn
    # Open loop instead: new conversations arrive as a Poisson process of this many per
    # second, however many are in flight (`concurrency` must then stay 1).
    rate: float | None = Field(default=None, gt=0)
    # When requests go out. closed: each turn as soon as the one before it ends, C
    # conversations in flight (the next starts as one ends): each deployment's batches then
    # depend on its own earlier answers. timetable: every conversation's start and every
    # turn's earliest send time are drawn once from the seed (starts `arrival_gap_s` apart on
    # average, turns `turn_gap_s`), the same on every deployment of every candidate; a turn
    # still waits for the one before it, and how late it went out is recorded.
    timing: Literal["closed", "timetable"] = "closed"
    arrival_gap_s: float = Field(default=2.0, gt=0)
    turn_gap_s: float = Field(default=2.0, ge=0)
    # Under load, /metrics is read this often for the KV-cache peak (one at a time: after
    # every request).
    metrics_interval_s: float = Field(default=2.0, gt=0)
    # One at a time, /metrics is read after every request (each request's own server-side
    # TTFT and prefix-cache delta); false reads it only around the measured phase.
    per_request_metrics: bool = True
    # No token for this long while the server is healthy: the trial fails as `hang`.
    stall_timeout_s: float = Field(default=60.0, gt=0)
    # Share of requests allowed to fail before the trial is `overload` (0: the first fails it).
    max_error_share: float = Field(default=0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _one_load_shape(self) -> LoadSpec:
        """A closed loop (``concurrency``) or an open one (``rate``), not both."""
        if self.rate is not None and self.concurrency > 1:
            raise ValueError("give either `concurrency` (closed loop) or `rate` (open loop)")
        if self.timing == "timetable" and (self.rate is not None or self.concurrency > 1):
            raise ValueError(
                "a timetable sets its own load (arrival_gap_s, turn_gap_s): "
                "no `rate` or `concurrency` with it"
            )
        return self

    @property
    def decided_from(self) -> int:
        """Measured conversations after which the dominated stop may end a measurement."""
        return self.decided_after or max(2, math.ceil(self.conversations / 2))

    def held_out(self) -> Self:
        """The same workload on conversations the search never used (for validation): the
        next seed's."""
        return self.model_copy(update={"seed": self.seed + 1})

    def relative_to(self, folder: Path) -> Self:
        """Paths in the spec resolved against ``folder`` (the objective file's): none here."""
        return self


class SyntheticAgentSpec(LoadSpec):
    """Agent conversations generated from ``seed``: a long system prompt with tool definitions,
    a user line per turn, optionally a tool result before each later turn.

    Tool results are sized in words (``tool_result_words``) or in tokens
    (``tool_result_tokens``: a number, or ``[min, max]`` drawn uniformly per turn). Token sizes
    use the server's own tokenizer (``/tokenize``, measured when the trial starts); before any
    server runs, ``tokens_per_word`` estimates them so that a shape which cannot fit
    ``max_model_len`` is refused before deploying. With ``context_tokens``, a conversation
    stops adding turns (``turns`` is then the most) before its prompt would pass that size.
    """

    kind: Literal["synthetic_agent"] = "synthetic_agent"
    system_prompt_words: int = Field(default=1200, ge=1)
    tools: int = Field(default=8, ge=0)
    turns: int = Field(default=4, ge=2)
    user_words: int = Field(default=40, ge=1)
    max_tokens: int = Field(default=24, ge=1)
    # True: every conversation opens with a never-seen salt (first turns are cold misses).
    # False: one system prompt shared by every conversation, as agents of one service do.
    salt_system_prompt: bool = True
    tool_result_words: int = Field(default=0, ge=0)  # a tool result appended before each turn
    tool_result_tokens: int | tuple[int, int] = 0  # the same, in tokens: fixed or [min, max]
    context_tokens: int | None = Field(default=None, gt=0)
    tokens_per_word: float = Field(default=1.3, gt=0)  # estimate until /tokenize has answered

    @model_validator(mode="after")
    def _one_tool_size(self) -> SyntheticAgentSpec:
        """Tool results sized one way (words or tokens), as a number or a [min, max] range."""
        t = self.tool_result_tokens
        lo, hi = t if isinstance(t, tuple) else (t, t)
        if lo < 0 or hi < lo:
            raise ValueError("tool_result_tokens: a number >= 0 or [min, max] with min <= max")
        if hi and self.tool_result_words:
            raise ValueError("give tool_result_words or tool_result_tokens, not both")
        return self


class TraceSpec(LoadSpec):
    """The user's recorded conversations, replayed turn by turn.

    ``format``: ``openai`` (JSONL, one ``{"messages": [...], "tools": [...]}`` per line) or
    ``sharegpt`` (JSON list or JSONL of ``{"conversations": [{"from", "value"}]}``). Each
    recorded assistant message is one request whose prompt is the recorded history before it;
    the recorded answer (not the model's) is appended afterwards, and the output length follows
    it, capped at ``max_tokens``. The last ``holdout`` share of the conversations is kept for
    validation (``split: holdout``); the search uses the rest.
    """

    kind: Literal["trace"] = "trace"
    path: Path
    format: Literal["openai", "sharegpt"] = "openai"
    holdout: float = Field(default=0.2, ge=0, lt=1)
    split: Literal["search", "holdout"] = "search"
    max_tokens: int = Field(default=256, ge=1)

    def held_out(self) -> TraceSpec:
        """The holdout split: conversations the search never used."""
        return self.model_copy(update={"split": "holdout"})

    def relative_to(self, folder: Path) -> TraceSpec:
        """The trace's path resolved against ``folder`` (the objective file's)."""
        if self.path.is_absolute():
            return self
        return self.model_copy(update={"path": (folder / self.path).resolve()})


WorkloadConfig = Annotated[SyntheticAgentSpec | TraceSpec, Field(discriminator="kind")]
WorkloadSpec = SyntheticAgentSpec  # the name before the seam existed


def held_out(spec: SyntheticAgentSpec | TraceSpec) -> SyntheticAgentSpec | TraceSpec:
    """The same workload on conversations the search never used (for validation)."""
    return spec.held_out()
