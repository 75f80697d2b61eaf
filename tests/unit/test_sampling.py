"""FreshSampler: whole points, never a known one, seeds untouched."""

from __future__ import annotations

from typing import Any

import optuna
import pytest

from tuner.config.space import ParamValue, SearchSpace
from tuner.errors import StudyError
from tuner.study.sampling import SAMPLERS, FreshSampler, front_params, make_sampler


class _Stuck(optuna.samplers.RandomSampler):
    """A base sampler that always proposes the same value: TPE's worst case, made certain."""

    def sample_independent(self, study: Any, trial: Any, name: str, dist: Any) -> Any:
        return dist.choices[0]


def _suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, ParamValue]:
    return {d.name: trial.suggest_categorical(d.name, list(d.values)) for d in space.dimensions}


def test_known_points_are_replaced_by_the_fallback(space: SearchSpace) -> None:
    seen: set[str] = set()
    fresh_points = (p for p in space.points() if space.key(p) != space.key(next(space.points())))
    sampler = FreshSampler(
        _Stuck(seed=0), space, lambda p: space.key(p) not in seen, lambda: next(fresh_points)
    )
    study = optuna.create_study(directions=["minimize"], sampler=sampler)
    keys = []
    for _ in range(5):
        trial = study.ask()
        params = _suggest(trial, space)
        keys.append(space.key(params))
        seen.add(keys[-1])
        study.tell(trial, 1.0)
    assert len(set(keys)) == 5
    assert keys[0] == space.key(next(space.points()))  # the base's own proposal while fresh
    assert sampler.fallbacks == 4


def test_enqueued_params_are_kept_even_when_known(space: SearchSpace) -> None:
    first = next(space.points())
    sampler = FreshSampler(_Stuck(seed=0), space, lambda p: False, lambda: pytest.fail("called"))
    study = optuna.create_study(sampler=sampler)
    study.enqueue_trial(dict(first))
    trial = study.ask()
    assert _suggest(trial, space) == first
    assert sampler.fallbacks == 0


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_named_sampler_builds_without_warnings(name: str, space: SearchSpace) -> None:
    assert isinstance(make_sampler(name, space, 0), optuna.samplers.BaseSampler)


def test_unknown_sampler_is_a_study_error(space: SearchSpace) -> None:
    with pytest.raises(StudyError, match="unknown sampler 'cmaes'"):
        make_sampler("cmaes", space, 0)


def test_front_params_matches_optunas_best_trials() -> None:
    """The cheap front (no deep copy) is Optuna's feasible Pareto front."""
    import random

    rng = random.Random(3)
    study = optuna.create_study(directions=["minimize", "minimize", "maximize"])
    for i in range(80):
        trial = study.ask()
        trial.suggest_int("i", i, i)
        trial.set_constraint("c", rng.uniform(-1, 0.3))
        study.tell(trial, [rng.random(), rng.random(), rng.random()])
    expected = sorted(t.params["i"] for t in study.best_trials)
    assert 3 <= len(expected) < 80
    assert sorted(p["i"] for p in front_params(study)) == expected
