"""Decisions that carry their uncertainty: groups within noise, the pick inside one, effects.

Two configurations are *indistinguishable* on a metric when the interval of the difference of their
statistic (e.g. median HIT TTFT) contains 0, at a level corrected for the number of comparisons
(Bonferroni). The interval carries both levels of noise (``tuner.decide.noise``): the samples of
each deployment, and the variation between fresh deployments of the same flags, which one
deployment per configuration cannot show by itself. The best *group* is the best candidate and
every candidate indistinguishable from it; inside it the pick is the one that changes fewest
settings from the user's current configuration (the baseline seed), then the lowest VRAM. *Effects*
estimate what each dimension does to each objective from the study's own trials, with an interval.

Raw samples come from each trial's ``measurements.json`` (``tuner.schema``); a trial without one
(an old or foreign study) falls back to its point value, so nothing is ever grouped on samples it
does not have.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial

from tuner.decide.noise import NoiseModel, study_noise
from tuner.errors import StudyError
from tuner.metrics import METRICS, Interval, Observations
from tuner.schema import TrialFolder
from tuner.trial import Attr, StoredTrial, StudyAttr, metric_sign, metric_value

__all__ = [
    "TAILS",
    "TIE",
    "Effect",
    "Group",
    "best_group",
    "bonferroni",
    "changes_from",
    "effects",
    "exclusion",
    "load_observations",
    "reference_params",
    "tails_apart",
    "within",
    "within_noise",
]

LEVEL = 0.95
# A group member must also be practically equivalent: its estimate within this share of the
# best's. Noise alone would otherwise let a 10 % slower point into the group when one
# deployment cannot tell them apart, and the tie-break (fewest changes) would then pick it.
TIE = 0.05


def bonferroni(level: float, comparisons: int) -> float:
    """The per-comparison level that keeps ``level`` over ``comparisons`` differences."""
    return 1.0 - (1.0 - level) / max(1, comparisons)


def within_noise(diff: Interval) -> bool:
    """Whether an interval of a difference contains 0: the two are not told apart."""
    return diff[0] <= 0 <= diff[1]


def within(diff: Interval, value: float, best: float, tie: float = TIE) -> bool:
    """Whether a candidate belongs to the best's group: the interval of its difference to the
    best contains 0 (within noise) and its estimate is within ``tie`` of the best's
    (practically equivalent). The one definition the search and the validation both use."""
    return within_noise(diff) and abs(value - best) <= tie * abs(best)


def exclusion(diff: Interval, value: float, best: float, tie: float = TIE) -> str:
    """Why a candidate is not in the best's group, in words (for the explanations)."""
    if within_noise(diff):
        return f"within the noise but more than {tie:.0%} away"
    return "beyond the noise"


def load_observations(
    study: optuna.Study, root: Path | None, trials: Sequence[FrozenTrial]
) -> dict[int, Observations]:
    """Raw sample series of ``trials`` from their measurements.json, where there is one.

    The study folder ``root`` wins over the path recorded in the trial (another machine's, for
    a study measured on a GPU box).
    """
    out: dict[int, Observations] = {}
    for t in trials:
        folders = []
        if root is not None:
            folders.append(TrialFolder.of(root, t.number))
        if Attr.TRIAL_DIR in t.user_attrs:
            folders.append(TrialFolder(Path(str(t.user_attrs[Attr.TRIAL_DIR]))))
        for folder in folders:
            if folder.measurements.exists():
                try:
                    out[t.number] = Observations(series=folder.read_measurements().series())
                except StudyError:
                    continue
                break
    return out


@dataclass(frozen=True, slots=True)
class Group:
    """The best candidate on ``metric`` and those within noise of it."""

    metric: str
    best: FrozenTrial
    members: tuple[FrozenTrial, ...]  # best first, then by value
    diffs: dict[int, Interval]  # trial number -> interval of (its value - best's)
    comparisons: int  # how many differences were tested (the Bonferroni divisor)
    on_samples: bool  # False: some candidate had no samples; grouped by point value
    noise: NoiseModel | None = None  # the noise the intervals carry

    @property
    def numbers(self) -> list[int]:
        """The members' trial numbers."""
        return [t.number for t in self.members]


def best_group(
    study: optuna.Study,
    candidates: Sequence[FrozenTrial],
    metric: str,
    observations: Mapping[int, Observations],
    *,
    noise: NoiseModel | None = None,
    level: float = LEVEL,
    seed: int = 0,
    tie: float = TIE,
) -> Group:
    """The best of ``candidates`` on ``metric`` and every candidate within noise of it.

    Each other candidate's difference to the best gets the two-level interval of ``noise``
    (default: the study's own, ``study_noise``) at level ``1 - (1 - level) / m`` for ``m``
    comparisons; it joins the group when the interval contains 0 and its estimate is within
    ``tie`` of the best's. A metric measured once (VRAM) has no samples: only equal values tie.
    """
    noise = noise or study_noise(study)
    if not candidates:
        raise ValueError("no candidates")
    sign = metric_sign(study, metric)
    ordered = sorted(candidates, key=lambda t: (sign * metric_value(study, t, metric), t.number))
    best = ordered[0]
    others = ordered[1:]
    corrected = bonferroni(level, len(others))
    spec = METRICS.get(metric)
    members = [best]
    diffs: dict[int, Interval] = {}
    on_samples = True
    for t in others:
        a = spec.samples(observations[t.number]) if spec and t.number in observations else []
        b = spec.samples(observations[best.number]) if spec and best.number in observations else []
        if spec is not None and a and b:
            ci = noise.diff(spec.stat, [a], [b], level=corrected, seed=seed)
        else:
            on_samples = False
            d = metric_value(study, t, metric) - metric_value(study, best, metric)
            ci = (d, d)
        diffs[t.number] = ci
        if within(ci, metric_value(study, t, metric), metric_value(study, best, metric), tie):
            members.append(t)
    return Group(metric, best, tuple(members), diffs, len(others), on_samples, noise)


def reference_params(study: optuna.Study) -> dict[str, Any] | None:
    """The user's current configuration: the parameters of the criteria's baseline seed."""
    crit = study.user_attrs.get(StudyAttr.CRITERIA) or {}
    for t in study.get_trials(deepcopy=False):
        if StoredTrial(t).is_seed(crit.get("baseline")) and t.params:
            return dict(t.params)
    return None


def changes_from(params: Mapping[str, Any], reference: Mapping[str, Any] | None) -> int:
    """How many settings ``params`` changes from ``reference`` (vLLM defaults: a set flag)."""
    if reference is None:
        # Without the user's configuration, a dimension left at null is vLLM's default.
        return sum(v is not None for v in params.values())
    return sum(params.get(k) != v for k, v in reference.items() if k in params)


@dataclass(frozen=True, slots=True)
class Effect:
    """What setting ``dimension`` to ``value`` does to ``metric``, against the other values."""

    dimension: str
    value: Any
    metric: str
    delta: float  # mean of the trials at value - mean of the others
    interval: Interval
    n: int  # trials at value
    n_rest: int

    @property
    def measurable(self) -> bool:
        """The interval excludes 0 (with at least two trials on each side)."""
        lo, hi = self.interval
        return math.isfinite(lo) and math.isfinite(hi) and not (lo <= 0 <= hi)


def effects(
    study: optuna.Study,
    trials: Sequence[FrozenTrial],
    *,
    metrics: Sequence[str] | None = None,
    level: float = LEVEL,
    seed: int = 0,
    resamples: int = 2000,
) -> list[Effect]:
    """Each dimension value's effect on each objective (or on ``metrics``), from the measured
    trials.

    The effect is the difference of the mean value of the trials at that value and of the
    others, with a percentile-bootstrap interval (trials resampled within each side). Each
    trial is its own deployment, so the variation between deployments is in the spread of the
    trials on each side. Booleans report one row (True against False).
    """
    rng = np.random.default_rng(seed)
    names = list(metrics if metrics is not None else study.metric_names or [])
    dims = list(dict.fromkeys(p for t in trials for p in t.params))
    out: list[Effect] = []
    alpha = (1.0 - level) / 2.0
    for d in dims:
        values = list(dict.fromkeys(t.params.get(d) for t in trials))
        if len(values) < 2:
            continue
        if set(values) == {True, False}:
            values = [True]
        for v in values:
            at = [t for t in trials if t.params.get(d) == v]
            rest = [t for t in trials if t.params.get(d) != v]
            if not at or not rest:
                continue
            for name in names:
                a = np.array([metric_value(study, t, name) for t in at])
                b = np.array([metric_value(study, t, name) for t in rest])
                if not (np.isfinite(a).all() and np.isfinite(b).all()):
                    continue
                delta = float(a.mean() - b.mean())
                ci = (math.nan, math.nan)
                if len(a) >= 2 and len(b) >= 2:  # one trial a side says nothing of the spread
                    ra = a[rng.integers(0, len(a), (resamples, len(a)))].mean(axis=1)
                    rb = b[rng.integers(0, len(b), (resamples, len(b)))].mean(axis=1)
                    lo, hi = np.quantile(ra - rb, [alpha, 1.0 - alpha])
                    ci = (float(lo), float(hi))
                out.append(Effect(d, v, name, delta, ci, len(a), len(b)))
    return out


# A statistic and its tail, as the metric table names them: a knob may move them apart.
TAILS = (
    ("ttft_hit_ms", "ttft_hit_p90_ms"),
    ("ttft_miss_ms", "ttft_miss_p90_ms"),
    ("itl_ms", "itl_p90_ms"),
    ("e2e_ms", "e2e_p90_ms"),
)


def tails_apart(study: optuna.Study, trials: Sequence[FrozenTrial]) -> list[tuple[Effect, Effect]]:
    """Dimension values that move a metric's median one way and its tail (p90) the other, each
    measurably: (effect on the median, effect on the tail). Chunked prefill without prefix
    caching did so to ITL on an H200 (p90 x5.9 worse, p99 x2.9 better): a report that read
    one percentile alone would call it better or worse."""
    names = [m for pair in TAILS for m in pair]
    found = effects(study, trials, metrics=names)
    by = {(e.dimension, json_key(e.value), e.metric): e for e in found}
    out = []
    for e in found:
        for median, tail in TAILS:
            t = by.get((e.dimension, json_key(e.value), tail))
            apart = (
                t is not None and e.measurable and t.measurable and (e.delta < 0) != (t.delta < 0)
            )
            if e.metric == median and t is not None and apart:
                out.append((e, t))
    return out


def json_key(v: Any) -> str:
    """A dimension value as a key (True and 1 kept apart)."""
    return json.dumps(v)
