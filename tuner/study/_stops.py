"""The study's two stops that save GPU time, read from what storage holds.

- :func:`dominated_stop`: a search trial's measurement ends early once a front point is ahead
  of it beyond the noise on a sampled objective and behind it on none (it keeps its figures,
  ``stop_reason: dominated``, and counts as a deployment).
- :func:`settled` (opt-in): the search ends before ``--trials`` once the seeds are done, every
  value of every dimension was deployed, the last k deployments added less than a set share of
  the front's hypervolume, even each at the favourable end of its interval, on a scale no finer
  than the study's between-deployment noise, and none of them came near the best figure.

The rules themselves are in ``tuner.decide.stops``; this module feeds them the study.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tuner.config.objective import ObjectiveFile
from tuner.config.space import ParamValue, SearchSpace
from tuner.decide.noise import Z95, study_noise
from tuner.decide.stops import Reading, dominated_by, recent_contender, recent_gain
from tuner.front import feasible, pareto_front
from tuner.measure import TrialMeasurement
from tuner.metrics import METRICS
from tuner.trial import Attr, StoredTrial, StudyAttr

__all__ = ["Ahead", "Settle", "Settled", "ahead_of", "dominated_stop", "settled"]


@dataclass(frozen=True, slots=True)
class Ahead:
    """What a search trial's measurement is compared with: the front when it started, each
    point's objectives as stored, their directions and the study's between-deployment cv."""

    front: list[tuple[int, list[Reading]]]
    signs: list[int]
    cv: float

    def check(self, ours: list[Reading], holder: list[int]) -> str | None:
        """``dominated`` (the front point's number appended to ``holder``), else None."""
        number = dominated_by(ours, self.front, self.signs, self.cv)
        if number is None:
            return None
        holder.append(number)
        return "dominated"


def ahead_of(study: optuna.Study, trial: optuna.Trial, names: list[str]) -> Ahead | None:
    """The front ``trial`` is measured against, or None (measure in full): for a seed, while
    any other seed is still waiting or running (the seeds set the front first), with no
    front yet."""
    if Attr.SEED_NAME in trial.user_attrs or _seeds_pending(study, besides=trial.number):
        return None
    front, _ = pareto_front(study)
    if not front:
        return None
    readings = [(t.number, [_stored(t, i, n) for i, n in enumerate(names)]) for t in front]
    return Ahead(readings, _signs(study), study_noise(study).cv)


def _seeds_pending(study: optuna.Study, besides: int | None = None) -> bool:
    """Whether a seed (other than trial ``besides``) is still waiting or running: the seeds
    set the front before either stop may act."""
    unsettled = (TrialState.WAITING, TrialState.RUNNING)
    return any(Attr.SEED_NAME in t.user_attrs and t.number != besides
               for t in study.get_trials(deepcopy=False, states=unsettled))  # fmt: skip


def _signs(study: optuna.Study) -> list[int]:
    """Per objective, 1 when minimised, -1 when maximised."""
    return [1 if d == StudyDirection.MINIMIZE else -1 for d in study.directions]


def dominated_stop(
    study: optuna.Study, trial: optuna.Trial, objective: ObjectiveFile, holder: list[int]
) -> Callable[[TrialMeasurement], str | None] | None:
    """The search's early stop for ``measure``: ``dominated`` once the trial is decidedly
    behind a point of the front (``tuner.decide.stops.dominated_by``), that point's number
    appended to ``holder``; None when ``ahead_of`` says to measure in full."""
    specs = [METRICS[o.name] for o in objective.objectives]
    ahead = ahead_of(study, trial, [s.name for s in specs])
    if ahead is None:
        return None

    def decided(m: TrialMeasurement) -> str | None:
        """``dominated`` when a front point is decidedly ahead, else None."""
        obs = m.observations()
        ours = []
        for spec in specs:
            ci = spec.interval(obs)
            ours.append(Reading(spec.compute(obs), *(ci if ci is not None else (None, None))))
        return ahead.check(ours, holder)

    return decided


def _stored(t: FrozenTrial, index: int, name: str) -> Reading:
    """Objective ``index`` of a stored trial, with its stored interval when it has one."""
    ci = t.user_attrs.get(f"ci_{name}")
    if isinstance(ci, list) and len(ci) == 2:
        return Reading(float(t.values[index]), float(ci[0]), float(ci[1]))
    return Reading(float(t.values[index]))


@dataclass(frozen=True, slots=True)
class Settle:
    """When the search may end before ``--trials``: the last ``after`` deployments added under
    ``share`` of the front's hypervolume (``--settle-after``, ``--settle-share``)."""

    after: int = 8
    share: float = 0.01
    # Not while one of those deployments came within this share of the best figure of the
    # first objective (None: the hypervolume alone decides).
    contenders: float | None = 0.05


@dataclass(frozen=True, slots=True)
class Settled:
    """Why the search ended before ``--trials`` (stored with the study for the report)."""

    deployments: int
    gain: float
    after: int
    share: float

    def words(self) -> str:
        """One sentence for the report and the CLI."""
        return (
            f"the search settled after {self.deployments} deployments: the last {self.after} "
            f"added {self.gain:.1%} to the front's hypervolume, even read in their favour "
            f"(under {self.share:.0%}), and every value of every dimension was deployed"
        )


def settled(
    study: optuna.Study,
    space: SearchSpace,
    valid: Mapping[str, dict[str, ParamValue]],
    settle: Settle,
) -> Settled | None:
    """The search's stop (``tuner.decide.stops.recent_gain``), once no seed is waiting or
    running and every value of every dimension that a valid point holds was deployed."""
    if _seeds_pending(study):
        return None
    trials = study.get_trials(deepcopy=False)
    busy = (TrialState.WAITING, TrialState.RUNNING)
    # this study's deployments, and the measurements --warm-start copied in (numbered first)
    done = [t for t in trials if t.state not in busy and (StoredTrial(t).is_deployment or (
        Attr.WARM_FROM in t.user_attrs and StoredTrial(t).evaluated))]  # fmt: skip
    wanted = {(d.name, repr(p[d.name])) for p in valid.values() for d in space.dimensions}
    seen = {(name, repr(v)) for t in done for name, v in t.params.items()}
    if len(done) <= settle.after or not wanted <= seen:
        return None
    signs = _signs(study)
    names = [str(n) for n in study.user_attrs.get(StudyAttr.OBJECTIVES) or ()]
    if len(names) != len(signs):
        return None
    values: list[list[float]] = []
    optimistic: list[list[float]] = []
    for t in sorted(done, key=lambda t: t.number):
        if t.state != TrialState.COMPLETE or feasible(t) is False:
            values.append([math.nan] * len(signs))
            optimistic.append([math.nan] * len(signs))
            continue
        pairs = enumerate(zip(names, signs, strict=True))
        readings = [_signed(t, i, n, s) for i, (n, s) in pairs]
        values.append([r.value for r in readings])
        optimistic.append([r.value if r.lo is None else r.lo for r in readings])
    gain = recent_gain(values, optimistic, settle.after, _noise_spans(study, values))
    if gain is None or gain >= settle.share:
        return None
    if settle.contenders is not None and recent_contender(values, settle.after, settle.contenders):
        return None
    return Settled(len(done), gain, settle.after, settle.share)


def _noise_spans(study: optuna.Study, values: list[list[float]]) -> list[float]:
    """Per objective, what two deployments of the same flags differ by (95 %, at the study's
    between-deployment variation) around the median figure: the finest scale worth reading."""
    cv = study_noise(study).cv
    spans = []
    for d in range(len(values[0]) if values else 0):
        column = [abs(v[d]) for v in values if math.isfinite(v[d])]
        spans.append(Z95 * math.sqrt(2) * cv * statistics.median(column) if column else 0.0)
    return spans


def _signed(t: FrozenTrial, index: int, name: str, sign: int) -> Reading:
    """Objective ``index`` (``name``) of ``t`` on a minimised scale, with its interval."""
    r = _stored(t, index, name)
    return r if sign > 0 else r.flipped()
