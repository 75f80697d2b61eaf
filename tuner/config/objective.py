"""Objective file: what to minimise, the success criteria, and the multi-turn agent workload."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tuner.config._yaml import StrictModel, load_model
from tuner.metrics import METRICS

__all__ = [
    "Criteria",
    "ObjectiveFile",
    "ObjectiveSpec",
    "WorkloadSpec",
    "load_objective",
]


class ObjectiveSpec(StrictModel):
    """One objective: a metric of ``tuner.metrics.METRICS``, by name.

    ``direction`` and ``unit`` default to the metric table's.
    """

    name: str
    direction: Literal["minimize", "maximize"] = "minimize"
    unit: str = ""
    description: str = ""
    # Adaptive measurement: keep measuring until the 95 % interval's half-width is at most
    # this fraction of the value (0.05: +-5 %), or the workload's caps are reached.
    precision: float | None = Field(default=None, gt=0, lt=1)

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        m = METRICS.get(str(data.get("name"))) if isinstance(data, dict) else None
        if m is not None:
            data = {"direction": m.direction, "unit": m.unit, **data}
        return data

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in METRICS:
            raise ValueError(f"unknown metric {v!r}; known: {', '.join(METRICS)}")
        return v


class Criteria(StrictModel):
    """The mission's success criteria, relative to the baseline seed's measurement."""

    baseline: str = "baseline_reference"
    miss_max_ratio: float = Field(default=1.2, gt=0)  # MISS <= 1.2 x baseline MISS
    hit_max_ratio: float = Field(default=0.7, gt=0)  # HIT <= 0.7 x baseline HIT
    min_speedup: float = Field(default=1.5, gt=0)  # MISS / HIT >= 1.5


class WorkloadSpec(StrictModel):
    """A multi-turn agent conversation: long system prompt with tools, growing history."""

    system_prompt_words: int = Field(default=1200, ge=1)
    tools: int = Field(default=8, ge=0)
    turns: int = Field(default=4, ge=2)
    conversations: int = Field(default=3, ge=3)
    warmup_conversations: int = Field(default=1, ge=0)
    user_words: int = Field(default=40, ge=1)
    max_tokens: int = Field(default=24, ge=1)
    temperature: float = 0.0
    ignore_eos: bool = True  # same number of output tokens in every configuration
    request_timeout_s: float = Field(default=300.0, gt=0)
    seed: int = 7
    # Caps of adaptive measurement (objectives with `precision`): at most this many measured
    # conversations / seconds of measurement. Without them, `conversations` is also the cap.
    max_conversations: int | None = Field(default=None, ge=1)
    max_seconds: float | None = Field(default=None, gt=0)
    # Load: C conversations in flight (closed loop; a new one starts as one ends), their
    # starts staggered so that the first turns do not arrive as one burst.
    concurrency: int = Field(default=1, ge=1)
    stagger_s: float = Field(default=0.25, ge=0)
    think_time_s: float = Field(default=0.0, ge=0)  # between a turn's answer and the next turn
    # True: every conversation opens with a never-seen salt (first turns are cold misses).
    # False: one system prompt shared by every conversation, as agents of one service do.
    salt_system_prompt: bool = True
    tool_result_words: int = Field(default=0, ge=0)  # a tool result appended before each turn
    # No token for this long while the server is healthy: the trial fails as `hang`.
    stall_timeout_s: float = Field(default=60.0, gt=0)
    # Share of requests allowed to fail before the trial is `overload` (0: the first fails it).
    max_error_share: float = Field(default=0.0, ge=0, lt=1)


class ObjectiveFile(StrictModel):
    """An objective YAML file: objectives (metrics of ``tuner.metrics``), criteria, workload."""

    name: str
    description: str = ""
    objectives: list[ObjectiveSpec] = Field(min_length=1)
    criteria: Criteria | None = Criteria()
    workload: WorkloadSpec = WorkloadSpec()

    @model_validator(mode="after")
    def _unique(self) -> ObjectiveFile:
        names = [o.name for o in self.objectives]
        if len(set(names)) != len(names):
            raise ValueError(f"objective names must be unique, got {names}")
        return self


def load_objective(path: Path) -> ObjectiveFile:
    """Load an objective YAML file."""
    return load_model(path, ObjectiveFile)
