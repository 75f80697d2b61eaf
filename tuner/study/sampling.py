"""Samplers: Optuna's, plus a wrapper that never proposes a configuration the study already holds.

A vLLM search space is a few hundred discrete points. Multi-objective TPE picks the candidate
with the best expected improvement, and in such a space that is often a point it has already
measured: left alone, a study spends many of its trials re-proposing known points (no
deployment, but no information either). ``FreshSampler`` asks the wrapped sampler again, and
after a few tries takes an unexplored point next to the current front instead.
"""

from __future__ import annotations

import json
import math
import random
import warnings
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from tuner.config.space import ParamValue, SearchSpace
from tuner.errors import StudyError
from tuner.front import pareto_front

__all__ = [
    "SAMPLERS",
    "FreshSampler",
    "Neighbours",
    "SamplerContext",
    "SamplerFactory",
    "check_sampler",
    "default_sampler",
    "front_params",
    "make_sampler",
]

SAMPLERS = ("tpe", "tpe-independent", "grid", "random", "nsga2")
# Samplers that re-propose measured points; grid never does, random and NSGA-II are kept as
# Optuna ships them (the benchmark's baselines).
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
        grid = {d.name: list(d.values) for d in space.dimensions}
        return _SweepSampler(grid, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    check_sampler(name)  # the one name left is nsga2
    return optuna.samplers.NSGAIISampler(seed=seed)


def _sqrt_gamma(n: int) -> int:
    return max(1, min(int(math.sqrt(n)), 25))


class FreshSampler(optuna.samplers.BaseSampler):
    """Proposes whole points of ``space`` that ``is_fresh`` accepts, asking ``base`` first.

    The point is drawn in ``sample_relative`` (before the trial's parameters are stored), so a
    known configuration never becomes a trial. ``fallback`` gives a fresh point when ``base``
    keeps proposing known ones. Enqueued trials (seeds) keep their fixed parameters.
    """

    def __init__(
        self,
        base: optuna.samplers.BaseSampler,
        space: SearchSpace,
        is_fresh: Callable[[dict[str, ParamValue]], bool],
        fallback: Callable[[], dict[str, ParamValue]],
        tries: int = 4,
    ) -> None:
        self.base = base
        self._space = {d.name: CategoricalDistribution(list(d.values)) for d in space.dimensions}
        self._is_fresh = is_fresh
        self._fallback = fallback
        self._tries = tries
        self.fallbacks = 0  # how often base only proposed known points (benchmarks read it)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return dict(self._space)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if "fixed_params" in trial.system_attrs or not search_space:
            return {}
        inner = self.base.infer_relative_search_space(study, trial)
        for _ in range(self._tries):
            point = dict(self.base.sample_relative(study, trial, inner)) if inner else {}
            for name, dist in self._space.items():
                if name not in point:
                    point[name] = self.base.sample_independent(study, trial, name, dist)
            if self._is_fresh(point):
                return point
        self.fallbacks += 1
        return dict(self._fallback())

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        # Only reached for parameters outside the space (or for enqueued trials' missing ones).
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()


def front_params(study: optuna.Study) -> list[dict[str, Any]]:
    """Parameters of the current Pareto front (feasible trials if any): the fallback's target."""
    return [t.params for t in pareto_front(study)[0]]


@dataclass(frozen=True, slots=True)
class SamplerContext:
    """What a sampler factory is given: the choice, and the runner's view of the study.

    ``is_fresh(params)`` says whether a point is valid and not yet evaluated (read from the
    study the runner holds); ``fallback()`` gives an unexplored valid point next to the front.
    """

    name: str
    space: SearchSpace
    seed: int | None
    fresh: bool
    is_fresh: Callable[[dict[str, ParamValue]], bool]
    fallback: Callable[[], dict[str, ParamValue]]


SamplerFactory = Callable[[SamplerContext], optuna.samplers.BaseSampler]


def default_sampler(ctx: SamplerContext) -> optuna.samplers.BaseSampler:
    """``make_sampler(ctx.name)``, wrapped in FreshSampler for the TPE kinds when ``ctx.fresh``."""
    base = make_sampler(ctx.name, ctx.space, ctx.seed)
    if ctx.fresh and ctx.name in _WRAPPED:
        return FreshSampler(base, ctx.space, ctx.is_fresh, ctx.fallback)
    return base


class Neighbours:
    """The duplicate fallback: an untaken valid point at the smallest Hamming distance from the
    current front (a random one while there is no front)."""

    def __init__(
        self, space: SearchSpace, valid: dict[str, dict[str, ParamValue]], rng: random.Random
    ) -> None:
        self._space, self._valid, self._rng = space, valid, rng
        self._keys = list(valid)
        self._codes: np.ndarray[Any, Any] | None = None  # encoded on first use

    def _code(self, params: dict[str, Any]) -> tuple[int, ...]:
        """Each dimension's value as its index (json.dumps keeps True and 1 apart)."""
        return tuple(
            [json.dumps(v) for v in d.values].index(json.dumps(params[d.name]))
            for d in self._space.dimensions
        )

    def pick(self, study: optuna.Study, taken: Collection[str]) -> dict[str, ParamValue]:
        """The point; ``taken``: keys measured, rejected, or deploying elsewhere."""
        keys, n_dims = self._keys, len(self._space.dimensions)
        if self._codes is None:
            self._codes = np.array([self._code(p) for p in self._valid.values()]).reshape(
                len(keys), n_dims
            )
        mask = np.fromiter((k not in taken for k in keys), dtype=bool, count=len(keys))
        front = front_params(study)
        if not front:
            return self._valid[self._rng.choice([k for k, m in zip(keys, mask, strict=True) if m])]
        targets = np.array([self._code(f) for f in front])
        dist = (self._codes[:, None, :] != targets[None, :, :]).sum(axis=2).min(axis=1)
        dist[~mask] = n_dims + 1
        best = dist.min()
        return self._valid[
            self._rng.choice([k for k, d in zip(keys, dist, strict=True) if d == best])
        ]
