"""What the validation rounds say: each candidate over fresh deployments, the validated pick.

Reads the linked ``NAME.validation`` study (written by ``tuner.study.validate``) and the raw
samples of its trials. A candidate's validated value is the median of its samples pooled over its
deployments; differences to the fastest carry a two-stage bootstrap interval (deployments, then
samples), so deployment-to-deployment variance is in it. The validated pick is chosen like the
search's default rule: the best group on TTFT HIT, then the fewest changes from the baseline, then
the lowest VRAM; the search's pick *held* when it is in that group.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.decide.groups import (
    bonferroni,
    changes_from,
    exclusion,
    load_observations,
    reference_params,
    within,
    within_noise,
)
from tuner.decide.noise import NoiseModel, study_noise
from tuner.errors import Reason
from tuner.metrics import METRICS, Interval
from tuner.schema import validation_name
from tuner.trial import Attr, StoredTrial, StudyAttr

__all__ = [
    "CandidateResult",
    "ValidationSummary",
    "load_validation",
    "summarize_validation",
    "tied_candidates",
]

HIT = "ttft_hit_ms"


@dataclass(frozen=True, slots=True)
class CandidateResult:
    """One candidate's validation: its search trial and its fresh deployments."""

    candidate: FrozenTrial
    deployments: tuple[FrozenTrial, ...]  # completed validation trials
    failed: tuple[str, ...]  # reasons of failed deployments
    samples: tuple[tuple[float, ...], ...]  # HIT samples per deployment
    is_baseline: bool

    @property
    def value(self) -> float:
        """Median HIT over every deployment's samples pooled (NaN when none completed)."""
        pooled = [x for s in self.samples for x in s]
        return statistics.median(pooled) if pooled else math.nan

    @property
    def per_deployment(self) -> list[float]:
        """Each deployment's median HIT, in round order: the spread between deployments."""
        return [statistics.median(s) for s in self.samples if s]

    @property
    def vram(self) -> float:
        """Mean memory over the fresh deployments."""
        xs = [float(t.user_attrs.get("vram_mib", math.nan)) for t in self.deployments]
        return statistics.fmean(xs) if xs else math.nan


@dataclass(frozen=True, slots=True)
class ValidationSummary:
    """The validation's verdict."""

    results: tuple[CandidateResult, ...]
    group: tuple[int, ...]  # candidate numbers within noise of the fastest
    diffs: dict[int, Interval]  # candidate -> interval of (its HIT - the fastest's)
    pick: CandidateResult | None
    search_pick: int | None
    planned: int
    done: int
    noise: NoiseModel | None = None  # the noise the intervals carry
    # The group's fastest was not faster than the baseline beyond the noise: the baseline (no
    # change at all) is the pick, and this is the interval of (that fastest - the baseline).
    kept: Interval | None = None

    @property
    def held(self) -> bool | None:
        """Whether the search's pick is in the validated best group (None: nothing to say)."""
        if self.search_pick is None or self.pick is None or self.kept is not None:
            return None  # kept: the pick is the baseline, not a candidate that could hold
        return self.search_pick in self.group

    def _result(self, number: int | None) -> CandidateResult | None:
        """The result of candidate ``number``, if it was validated."""
        return next((r for r in self.results if r.candidate.number == number), None)

    def words(self) -> str:
        """The verdict as the report prints it."""
        if self.pick is None:
            return "Validation has no completed deployment of a candidate yet."
        n = self.pick.candidate.number
        parts = [
            f"Validated pick: trial {n} (HIT {self.pick.value:.1f} ms over "
            f"{len(self.pick.deployments)} fresh deployment(s), held-out conversations)."
        ]
        if len(self.group) > 1:
            listed = ", ".join(str(g) for g in sorted(self.group))
            parts.append(
                f"Trials {listed} are within noise on HIT in validation (samples within each "
                "deployment and the variation between deployments, Bonferroni-corrected); the "
                "pick changes the fewest settings from the baseline, then uses the least VRAM."
            )
            if self.noise is not None:
                need = self.noise.deployments_for(0.05)
                if need > len(self.pick.deployments):
                    parts.append(
                        f"At {self.noise.cv:.1%} between deployments here, telling 5 % apart "
                        f"takes about {need} deployments of each (`--validate-extra "
                        f"{(need - len(self.pick.deployments)) * len(self.group)}`)."
                    )
        held = self.held
        if held is True:
            parts.append(f"The search's pick (trial {self.search_pick}) held.")
        elif held is False:
            # The fastest is the group's one member without a difference to itself.
            fastest = self._result(next(g for g in self.group if g not in self.diffs))
            slower = self._result(self.search_pick)
            diff = self.diffs.get(self.search_pick) if self.search_pick is not None else None
            why = "slower than"
            if fastest is not None and slower is not None and diff is not None:
                why = exclusion(diff, slower.value, fastest.value) + " of"
            where = f"trial {fastest.candidate.number}" if fastest else "the fastest"
            parts.append(
                f"The search's pick (trial {self.search_pick}) did NOT hold: once redeployed it "
                f"is {why} {where}; the pick is trial {n}."
            )
        if self.kept is not None:
            lo, hi = self.kept
            parts.append(
                f"No candidate was faster than the baseline beyond the noise (the fastest's HIT "
                f"minus the baseline's: [{lo:+.1f}, {hi:+.1f}] ms): keep the baseline."
            )
        if self.done < self.planned:
            parts.append(f"Only {self.done} of {self.planned} planned deployments ran.")
        return " ".join(parts)


def load_validation(study: optuna.Study) -> optuna.Study | None:
    """The linked validation study in ``study``'s storage, if one was run."""
    name = validation_name(study.study_name)
    # Optuna exposes a loaded study's storage only as ``_storage``; the linked study lives there.
    storage = study._storage
    if name not in optuna.study.get_all_study_names(storage=storage):
        return None
    return optuna.load_study(study_name=name, storage=storage)


def _results(
    search: optuna.Study, validation: optuna.Study, root: Path | None, before_round: int | None
) -> tuple[list[CandidateResult], list[FrozenTrial]]:
    """Each candidate's deployments (those of rounds below ``before_round`` when given)."""
    trials = [
        t
        for t in validation.get_trials(deepcopy=False)
        if before_round is None or int(t.user_attrs.get(Attr.ROUND, 0)) < before_round
    ]
    by_number = {t.number: t for t in search.get_trials(deepcopy=False)}
    base_name = (search.user_attrs.get(StudyAttr.CRITERIA) or {}).get("baseline")
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    obs = load_observations(validation, root / "validation" if root else None, done)
    spec = METRICS[HIT]
    results: list[CandidateResult] = []
    for number in dict.fromkeys(int(t.user_attrs[Attr.CANDIDATE]) for t in trials):
        cand = by_number[number]
        mine = [t for t in trials if t.user_attrs.get(Attr.CANDIDATE) == number]
        ok = tuple(t for t in mine if t.state == TrialState.COMPLETE)
        failed = tuple(str(r) for t in mine if (r := StoredTrial(t).reason) and r.is_failure)
        samples = tuple(tuple(spec.samples(obs[t.number])) for t in ok if t.number in obs)
        is_base = StoredTrial(cand).is_seed(base_name)
        results.append(CandidateResult(cand, ok, failed, samples, is_base))
    return results, trials


def _rank(
    results: list[CandidateResult], noise: NoiseModel, seed: int
) -> tuple[list[CandidateResult], dict[int, Interval]]:
    """The contenders fastest first, and each slower one's interval of (its HIT - fastest's),
    carrying the samples of each deployment and the variation between deployments."""
    contenders = [r for r in results if not r.is_baseline and r.samples]
    ordered = sorted(contenders, key=lambda r: (r.value, r.candidate.number))
    if not ordered:
        return [], {}
    best, stat = ordered[0], METRICS[HIT].stat
    level = bonferroni(0.95, len(ordered) - 1)
    diffs = {
        r.candidate.number: noise.diff(stat, r.samples, best.samples, level=level, seed=seed)
        for r in ordered[1:]
    }
    return ordered, diffs


def tied_candidates(
    search: optuna.Study,
    validation: optuna.Study,
    root: Path | None,
    before_round: int,
    *,
    seed: int = 0,
) -> list[int]:
    """Candidates not yet told apart from the fastest on the rounds before ``before_round``:
    the fastest, then every one whose interval of the difference contains 0 (whatever its
    distance: one 8 % slower on two deployments may still be the fastest), fastest first.
    What adaptive validation redeploys next."""
    results, _ = _results(search, validation, root, before_round)
    ordered, diffs = _rank(results, study_noise(search, validation), seed)
    return [
        r.candidate.number
        for r in ordered
        if r is ordered[0] or within_noise(diffs[r.candidate.number])
    ]


def summarize_validation(
    search: optuna.Study,
    validation: optuna.Study,
    root: Path | None,
    search_pick: int | None = None,
    *,
    seed: int = 0,
) -> ValidationSummary:
    """Group the candidates on their validation deployments and choose the validated pick."""
    results, trials = _results(search, validation, root, None)
    rounds = validation.user_attrs.get(StudyAttr.ROUNDS)
    finished = sum(1 for t in trials if t.state == TrialState.COMPLETE) + sum(
        len(r.failed) for r in results
    )
    if isinstance(rounds, int):
        # The fixed rounds, plus what adaptive rounds deployed (they plan as they go).
        extra = [t for t in trials if int(t.user_attrs.get(Attr.ROUND, 0)) >= rounds]
        done_extra = [t for t in extra if StoredTrial(t).reason != Reason.INTERRUPTED]
        planned = rounds * len(results) + len(done_extra)
    else:  # a validation study from before adaptive rounds
        planned_rounds = max((int(t.user_attrs.get(Attr.ROUND, 0)) for t in trials), default=-1) + 1
        planned = planned_rounds * len(results)
    noise = study_noise(search, validation)
    ordered, diffs = _rank(results, noise, seed)
    if not ordered:
        return ValidationSummary(
            tuple(results), (), {}, None, search_pick, planned, finished, noise
        )
    best = ordered[0]
    group = [best] + [
        r for r in ordered[1:] if within(diffs[r.candidate.number], r.value, best.value)
    ]
    ref = reference_params(search)
    pick = min(group, key=lambda r: (changes_from(r.candidate.params, ref), r.vram, r.value))
    numbers = tuple(r.candidate.number for r in group)
    # The baseline changes nothing: unless the fastest beats it beyond the noise, it stays.
    kept = None
    base = next((r for r in results if r.is_baseline and r.samples), None)
    if base is not None:
        gain = noise.diff(METRICS[HIT].stat, best.samples, base.samples, seed=seed)
        if math.isfinite(gain[1]) and gain[1] >= 0:
            pick, kept = base, gain
    return ValidationSummary(
        tuple(results), numbers, diffs, pick, search_pick, planned, finished, noise, kept
    )
