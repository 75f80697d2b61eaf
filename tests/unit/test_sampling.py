"""The proposer (tuner.study.propose): whole valid points, never a known one, queued trials
untouched, and every decision read from storage."""

from __future__ import annotations

import random
from typing import Any

import optuna
import pytest

from tuner.config.seeds import Seed
from tuner.config.space import ParamValue, SearchSpace
from tuner.errors import StudyError
from tuner.front import pareto_front
from tuner.study.propose import Proposer, Snapshot, enqueue_seeds
from tuner.study.sampling import SAMPLERS, make_sampler
from tuner.trial import Attr, Role, StoredTrial


class _Stuck(optuna.samplers.RandomSampler):
    """A base sampler that always proposes the same value: TPE's worst case, made certain."""

    def sample_independent(self, study: Any, trial: Any, name: str, dist: Any) -> Any:
        return dist.choices[0]


def _suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, ParamValue]:
    return {d.name: trial.suggest_categorical(d.name, list(d.values)) for d in space.dimensions}


def _valid(space: SearchSpace) -> dict[str, dict[str, ParamValue]]:
    return {space.key(p): p for p in space.points()}


def test_known_points_are_replaced_by_a_fresh_neighbour(space: SearchSpace) -> None:
    """A base that only ever proposes one point: its own proposal first, then fresh
    neighbours of the front, each marked ``fallback``, none twice."""
    sampler = Proposer(_Stuck(seed=0), space, _valid(space), seed=0)
    study = optuna.create_study(directions=["minimize"], sampler=sampler)
    keys = []
    for i in range(5):
        trial = study.ask()
        keys.append(space.key(_suggest(trial, space)))
        study.tell(trial, float(i))
    assert len(set(keys)) == 5
    assert keys[0] == space.key(next(space.points()))  # the base's own proposal while fresh
    roles = [StoredTrial(t).role for t in study.trials]
    assert roles == [Role.SAMPLER] + [Role.FALLBACK] * 4


def test_a_point_queued_or_running_elsewhere_is_not_fresh(space: SearchSpace) -> None:
    """The base's one proposal is queued for another worker (WAITING, then RUNNING without
    its parameters drawn yet): the proposer takes another point."""
    first = next(space.points())
    sampler = Proposer(_Stuck(seed=0), space, _valid(space), seed=0)
    study = optuna.create_study(sampler=sampler)
    study.enqueue_trial(dict(first))
    assert space.key(first) in Snapshot.read(study, space).busy
    other = study.ask()  # pops the queued trial: RUNNING, its point in fixed_params
    assert space.key(first) in Snapshot.read(study, space).busy
    mine = study.ask()
    assert space.key(_suggest(mine, space)) != space.key(first)
    assert _suggest(other, space) == first


def test_enqueued_params_are_kept_even_when_known(space: SearchSpace) -> None:
    first = next(space.points())
    sampler = Proposer(_Stuck(seed=0), space, {}, seed=0)  # nothing valid: never consulted
    study = optuna.create_study(sampler=sampler)
    study.enqueue_trial(dict(first))
    trial = study.ask()
    assert _suggest(trial, space) == first
    assert Attr.FALLBACK not in study.trials[0].user_attrs


def test_without_freshness_a_streak_of_duplicates_gets_a_neighbour(space: SearchSpace) -> None:
    """Random and NSGA-II pass through as Optuna ships them; only after ``streak`` duplicates
    in a row (read from storage) does the proposer step in with a fresh point."""
    sampler = Proposer(_Stuck(seed=0), space, _valid(space), fresh=False, streak=2, seed=0)
    study = optuna.create_study(sampler=sampler)
    stuck = space.key(next(space.points()))
    for _ in range(2):
        trial = study.ask()
        assert space.key(_suggest(trial, space)) == stuck
        trial.set_user_attr(Attr.REASON, "duplicate")
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    trial = study.ask()
    assert space.key(_suggest(trial, space)) != stuck
    assert StoredTrial(study.trials[-1]).role == Role.FALLBACK


def test_seeds_are_queued_once_and_twins_share_a_trial(space: SearchSpace) -> None:
    """Two seeds of one point become one queued trial with both names; queueing again (a
    resume, a second worker) adds nothing."""
    base = dict(next(space.points()))
    other = dict(list(space.points())[1])
    seeds = [Seed("a", base), Seed("b", other), Seed("a_again", dict(base))]
    study = optuna.create_study()
    assert enqueue_seeds(study, seeds, space) == 2
    assert enqueue_seeds(study, seeds, space) == 0
    names = [StoredTrial(t).seed_names for t in study.trials]
    assert names == [("a", "a_again"), ("b",)]


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_named_sampler_builds_without_warnings(name: str, space: SearchSpace) -> None:
    assert isinstance(make_sampler(name, space, 0), optuna.samplers.BaseSampler)


def test_unknown_sampler_is_a_study_error(space: SearchSpace) -> None:
    with pytest.raises(StudyError, match="unknown sampler 'cmaes'"):
        make_sampler("cmaes", space, 0)


def test_the_cheap_front_matches_optunas_best_trials() -> None:
    """The front computed without deep copies is Optuna's feasible Pareto front."""
    rng = random.Random(3)
    study = optuna.create_study(directions=["minimize", "minimize", "maximize"])
    for i in range(80):
        trial = study.ask()
        trial.suggest_int("i", i, i)
        trial.set_constraint("c", rng.uniform(-1, 0.3))
        study.tell(trial, [rng.random(), rng.random(), rng.random()])
    expected = sorted(t.params["i"] for t in study.best_trials)
    assert 3 <= len(expected) < 80
    assert sorted(t.params["i"] for t in pareto_front(study)[0]) == expected
