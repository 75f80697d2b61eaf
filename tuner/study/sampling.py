"""Samplers by name: Optuna's, as the study's proposer wraps them (``tuner.study.propose``).

A vLLM search space is a few hundred discrete points. Multi-objective TPE picks the candidate
with the best expected improvement, and in such a space that is often a point it has already
measured: left alone, a study spends many of its trials re-proposing known points (no
deployment, but no information either). The proposer asks the wrapped sampler again, and after
a few tries takes an unexplored point next to the current front instead.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.config.space import ParamValue, SearchSpace
from tuner.errors import StudyError
from tuner.study._coverage import Coverage
from tuner.study.propose import Proposer

__all__ = [
    "SAMPLERS",
    "SamplerContext",
    "SamplerFactory",
    "check_sampler",
    "default_sampler",
    "make_sampler",
]

SAMPLERS = ("tpe", "tpe-independent", "grid", "random", "nsga2")
# Samplers that re-propose measured points, asked again for a fresh one; grid never repeats,
# random and NSGA-II pass through as Optuna ships them (the benchmark's baselines).
_WRAPPED = ("tpe", "tpe-independent")


class _SweepSampler(optuna.samplers.GridSampler):
    """GridSampler for the ask/tell loop: the runner stops when every valid point is done.

    GridSampler.after_trial calls ``study.stop()`` once the grid is exhausted, which Optuna only
    allows inside ``study.optimize``; the runner drives trials with ask/tell instead.
    """

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        """Nothing: the runner stops the sweep when every valid point is evaluated."""
        return None


def check_sampler(name: str) -> None:
    """StudyError unless ``name`` is one of :data:`SAMPLERS`."""
    if name not in SAMPLERS:
        raise StudyError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}")


def make_sampler(name: str, space: SearchSpace, seed: int | None) -> optuna.samplers.BaseSampler:
    """The Optuna sampler called ``name``; ``grid`` enumerates every point of ``space``.

    ``tpe`` (the default) models the dimensions jointly: prefix caching, chunked prefill and the
    batch budget interact (chunked prefill with prefix caching is worse than either alone), which
    independent per-dimension densities cannot express. Its "good" set is the best sqrt(n)
    trials instead of 10 %: with three objectives most of the front is good, and 10 % of 30
    trials is 3 points. Fewer EI candidates (8, not 24) keep it from converging on one corner.
    Both were chosen on benchmarks/sample_efficiency.py, which shows the before/after table.
    ``tpe-independent`` is Optuna's default TPE, kept to compare against.
    """
    if name == "tpe":
        with warnings.catch_warnings():
            # `gamma` is deprecated since Optuna 4.9 with no replacement yet (removal in 6.0,
            # hence the <6 pin): without it, 3-objective TPE models "good" as 3 of 30 trials.
            warnings.simplefilter("ignore", FutureWarning)
            # constant_liar (Optuna 5's default, named because scale-out relies on it): points
            # RUNNING on other workers count as measured at their worst, so that workers do not
            # crowd one region; with one worker nothing runs elsewhere.
            return optuna.samplers.TPESampler(
                seed=seed, multivariate=True, gamma=_sqrt_gamma, n_ei_candidates=8,
                constant_liar=True,
            )  # fmt: skip
    if name == "tpe-independent":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "grid":
        grid = {d.name: list(d.choices) for d in space.dimensions}
        return _SweepSampler(grid, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    check_sampler(name)  # the one name left is nsga2
    return optuna.samplers.NSGAIISampler(seed=seed)


def _sqrt_gamma(n: int) -> int:
    """TPE's 'good' set: the best sqrt(n) trials (at most 25)."""
    return max(1, min(int(math.sqrt(n)), 25))


@dataclass(frozen=True, slots=True)
class SamplerContext:
    """What a sampler factory is given: the user's choice, and the points it may propose.

    ``valid``: every point the validity rules accept, by key; ``fresh``: never propose a point
    the study holds (the TPE kinds); ``coverage``: try unseen values and carry winners (the
    default TPE); ``streak``: duplicates in a row before a fresh neighbour, without ``fresh``.
    """

    name: str
    space: SearchSpace
    seed: int | None
    valid: Mapping[str, dict[str, ParamValue]]
    fresh: bool = True
    coverage: bool = True
    streak: int = 3


SamplerFactory = Callable[[SamplerContext], optuna.samplers.BaseSampler]


def default_sampler(ctx: SamplerContext) -> optuna.samplers.BaseSampler:
    """``make_sampler(ctx.name)`` inside the proposer (the grid as it is: it never repeats)."""
    base = make_sampler(ctx.name, ctx.space, ctx.seed)
    if ctx.name == "grid":
        return base
    cover = Coverage(ctx.space) if ctx.coverage and ctx.name == "tpe" else None
    return Proposer(
        base,
        ctx.space,
        ctx.valid,
        fresh=ctx.fresh and ctx.name in _WRAPPED,
        coverage=cover,
        seed=ctx.seed,
        streak=ctx.streak,
    )
