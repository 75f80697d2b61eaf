"""Objective file: what to minimise, the success criteria, and the multi-turn agent workload."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tuner.config._yaml import StrictModel, load_model
from tuner.config.workload import SyntheticAgentSpec, TraceSpec, WorkloadConfig, WorkloadSpec
from tuner.metrics import METRICS

__all__ = [
    "SLO",
    "Bound",
    "Criteria",
    "ObjectiveFile",
    "ObjectiveSpec",
    "SyntheticAgentSpec",
    "TraceSpec",
    "WorkloadConfig",
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
        """An objective's direction and unit default to the metric table's, so ``{name:
        ttft_hit_ms}`` is enough."""
        m = METRICS.get(str(data.get("name"))) if isinstance(data, dict) else None
        if m is not None:
            data = {"direction": m.direction, "unit": m.unit, **data}
        return data

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        """An objective must name a metric of the table."""
        if v not in METRICS:
            raise ValueError(f"unknown metric {v!r}; known: {', '.join(METRICS)}")
        return v


class Criteria(StrictModel):
    """The mission's success criteria, relative to the baseline seed's measurement."""

    baseline: str = "baseline_reference"
    miss_max_ratio: float = Field(default=1.2, gt=0)  # MISS <= 1.2 x baseline MISS
    hit_max_ratio: float = Field(default=0.7, gt=0)  # HIT <= 0.7 x baseline HIT
    min_speedup: float = Field(default=1.5, gt=0)  # MISS / HIT >= 1.5


class SLO(StrictModel):
    """Service-level objective of one request class: a request meets it when its TTFT and its
    mean inter-token latency (TPOT) are within these bounds (a bound left out always holds)."""

    ttft_ms: float | None = Field(default=None, gt=0)
    tpot_ms: float | None = Field(default=None, gt=0)


class Guard(StrictModel):
    """The answer guard (``tuner.measure.guard``): after the load, ``requests`` greedy requests
    of at most ``max_tokens`` tokens each, compared with the baseline's answers."""

    requests: int = Field(default=6, ge=1, le=64)
    max_tokens: int = Field(default=32, ge=1, le=1024)
    seed: int = 0


class Bound(StrictModel):
    """A constraint on a metric of the table: ``min`` <= value <= ``max`` (Optuna constraint)."""

    metric: str
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _check(self) -> Bound:
        """A known metric, and at least one bound."""
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; known: {', '.join(METRICS)}")
        if self.min is None and self.max is None:
            raise ValueError("a constraint needs min or max")
        return self


class ObjectiveFile(StrictModel):
    """An objective YAML file: objectives (metrics of ``tuner.metrics``), criteria, workload."""

    name: str
    description: str = ""
    objectives: list[ObjectiveSpec] = Field(min_length=1)
    criteria: Criteria | None = Criteria()
    workload: WorkloadConfig = SyntheticAgentSpec()
    # Per request class (cold, first_turn, continuation): what counts towards goodput.
    slos: dict[Literal["cold", "first_turn", "continuation"], SLO] = {}
    # Constraints on any metric, e.g. {metric: goodput, min: 0.95}: a trial outside them is
    # infeasible (Optuna constraints), whatever its objective values.
    constraints: list[Bound] = []
    # Same answers as the baseline? (`guard: null`: not checked, e.g. a server that cannot
    # return token ids.) Usable as a constraint: {metric: answers_same, min: 0.99}.
    guard: Guard | None = Guard()

    def sampled_precisions(self) -> list[tuple[str, float]]:
        """(name, precision) of every objective with a ``precision`` that is measured from
        samples: a value measured once (VRAM) has no interval to narrow. What adaptive
        measurement measures to, and what ``--stop-when-met`` asks of a trial."""
        return [
            (o.name, o.precision)
            for o in self.objectives
            if o.precision and METRICS[o.name].stat != "value"
        ]

    @model_validator(mode="before")
    @classmethod
    def _default_kind(cls, data: Any) -> Any:
        """A workload without ``kind`` is the synthetic agent (objective files from before the
        workload seam)."""
        # Objective files written before the workload seam have no `kind`: the synthetic one.
        if isinstance(data, dict) and isinstance(data.get("workload"), dict):
            data = {**data, "workload": {"kind": "synthetic_agent", **data["workload"]}}
        return data

    @model_validator(mode="after")
    def _unique(self) -> ObjectiveFile:
        """Objective names are unique, and goodput comes with the SLOs that define it."""
        names = [o.name for o in self.objectives]
        if len(set(names)) != len(names):
            raise ValueError(f"objective names must be unique, got {names}")
        uses = names + [b.metric for b in self.constraints]
        if "goodput" in uses and not self.slos:
            raise ValueError("goodput needs slos: per request class, ttft_ms and/or tpot_ms")
        return self


def load_objective(path: Path) -> ObjectiveFile:
    """Load an objective YAML file; a trace's path is relative to the file's folder."""
    obj = load_model(path, ObjectiveFile)
    return obj.model_copy(update={"workload": obj.workload.relative_to(path.parent)})
