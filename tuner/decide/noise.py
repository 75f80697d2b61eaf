"""How much one configuration's figures move between fresh deployments, and within one.

A search measures each configuration on one deployment; the same flags deployed again measure
apart (1-14 % on one H100 at 8 agents, ×1.8 on vLLM-CPU), as much as candidates differ.
:func:`spread` reads K deployments of one configuration and says, per metric: the coefficient
of variation of the deployments' medians (between), max/min, the median relative half-width of
one deployment's own 95 % interval (within), how much the same request moved across
deployments, and the load each saw (requests in flight at a HIT send, lateness on a
timetable). :class:`NoisePrior` is what is kept of it for later studies on the same machine
and deployer: the between-deployment variation that one deployment per configuration cannot
see for itself.
"""

from __future__ import annotations

import json
import math
import socket
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tuner.metrics import METRICS, Observations
from tuner.schema import RequestRecord, series_of, write_json

__all__ = ["DEFAULT_CV", "NoisePrior", "Spread", "in_flight_at_hits", "spread"]

# Between-deployment variation assumed where nothing was measured: what the decision-quality
# benchmark models (the H100 study's validation moved its pick 1-14 %).
DEFAULT_CV = 0.08


@dataclass(frozen=True, slots=True)
class Spread:
    """One metric of one configuration over several fresh deployments."""

    metric: str
    timing: str
    medians: tuple[float, ...]  # each deployment's statistic, in deployment order
    within: float  # median relative half-width of one deployment's 95 % interval
    request_cv: tuple[float, float]  # p50, p90 of the same request's CV across deployments
    in_flight: float  # mean requests in flight when a HIT turn was sent
    late_ms: float | None  # median lateness past the timetable (None: closed loop)

    @property
    def cv(self) -> float:
        """Coefficient of variation of the deployments' figures (NaN below two)."""
        xs = self.medians
        if len(xs) < 2 or not statistics.fmean(xs):
            return math.nan
        return statistics.stdev(xs) / statistics.fmean(xs)

    @property
    def max_over_min(self) -> float:
        """Largest deployment's figure over the smallest's."""
        xs = sorted(float(x) for x in self.medians)
        return xs[-1] / xs[0] if xs and xs[0] > 0 else math.nan


def in_flight_at_hits(records: Sequence[RequestRecord]) -> float:
    """Mean number of other requests in flight when each measured HIT turn was sent."""
    measured = [r for r in records if r.kind != "warmup"]
    spans = [(r.started_s, r.started_s + r.total_ms / 1000.0) for r in measured]
    counts = [sum(1 for a, b in spans if a < r.started_s < b) for r in measured if r.kind == "hit"]
    return statistics.fmean(counts) if counts else math.nan


def _request_cv(deployments: Sequence[Sequence[RequestRecord]], kind: str) -> tuple[float, float]:
    """p50 and p90 over requests (same conversation and turn in every deployment) of the CV of
    that request's TTFT across deployments."""
    keyed = [
        {(r.conversation, r.turn): r.ttft_ms for r in d if r.kind == kind} for d in deployments
    ]
    common = set.intersection(*(set(k) for k in keyed)) if keyed else set()
    cvs = (
        sorted(
            statistics.stdev(xs) / statistics.fmean(xs)
            for key in common
            if (xs := [k[key] for k in keyed]) and statistics.fmean(xs) > 0
        )
        if len(keyed) >= 2
        else []
    )
    if not cvs:
        return (math.nan, math.nan)
    return (cvs[len(cvs) // 2], cvs[min(len(cvs) - 1, int(0.9 * len(cvs)))])


def spread(deployments: Sequence[Sequence[RequestRecord]], metric: str, timing: str) -> Spread:
    """``metric``'s spread over ``deployments`` (each one's request records)."""
    spec = METRICS[metric]
    medians, within = [], []
    for records in deployments:
        obs = Observations(series=series_of(list(records)))
        value = spec.compute(obs)
        ci = spec.interval(obs)
        medians.append(value)
        if ci is not None and value and all(math.isfinite(x) for x in ci):
            within.append((ci[1] - ci[0]) / 2 / abs(value))
    kind = "miss" if "miss" in metric else "hit"
    late = [r.late_ms for d in deployments for r in d if r.late_ms is not None]
    flights = [in_flight_at_hits(d) for d in deployments]
    return Spread(
        metric=metric,
        timing=timing,
        medians=tuple(medians),
        within=statistics.median(within) if within else math.nan,
        request_cv=_request_cv(deployments, kind)
        if metric.startswith("ttft")
        else (math.nan, math.nan),
        in_flight=statistics.fmean(flights) if flights else math.nan,
        late_ms=statistics.median(late) if late else None,
    )


@dataclass(frozen=True, slots=True)
class NoisePrior:
    """The between-deployment variation measured on one machine with one deployer kind: what
    a study there assumes until its own repeated deployments say more."""

    cv: float  # relative sd of one deployment's HIT median around the configuration's
    deployments: int  # how many deployments it was measured from (its weight)
    timing: str
    host: str
    deployer: str
    measured_at: str
    source: str  # "tuner noise" or "study NAME"

    @staticmethod
    def path(studies: Path, deployer: str, host: str | None = None) -> Path:
        """Where the prior for this host and deployer kind is kept."""
        return studies / ".noise" / f"{host or socket.gethostname()}-{deployer}.json"

    @classmethod
    def measured(cls, s: Spread, deployer: str, source: str) -> NoisePrior:
        """The prior a noise measurement gives."""
        return cls(s.cv, len(s.medians), s.timing, socket.gethostname(), deployer,
                   time.strftime("%Y-%m-%d"), source)  # fmt: skip

    def save(self, studies: Path) -> Path:
        """Keep it for later studies on this host and deployer; its path."""
        path = self.path(studies, self.deployer, self.host)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, asdict(self))
        return path

    @classmethod
    def load(cls, studies: Path, deployer: str) -> NoisePrior | None:
        """The prior kept for this host and deployer, if one was measured."""
        path = cls.path(studies, deployer)
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def words(self) -> str:
        """Where the figure comes from, for the report."""
        return (
            f"{self.cv:.1%} between fresh deployments ({self.source}, {self.deployments} "
            f"deployments, {self.timing} load, {self.host}, {self.measured_at})"
        )
