"""The two stops that save GPU time: a measurement already decided (dominated), a search
already settled; the rules on constructed figures, then on the simulated engine."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import pytest

from tests.conftest import BASE_POINT
from tuner.config import ObjectiveFile, Profile
from tuner.config.seeds import Seed
from tuner.config.space import SearchSpace
from tuner.decide.stops import Reading, dominated_by, recent_contender, recent_gain
from tuner.report import write_report
from tuner.study import RunSettings, StudyPaths, StudyRunner, load_study
from tuner.study._stops import Settle, dominated_stop, settled
from tuner.testing import fake_profile
from tuner.trial import Attr

MIN, MAX = 1, -1


class TestDominated:
    def test_behind_on_every_sampled_objective_beyond_the_noise(self) -> None:
        front = [(3, [Reading(100, 95, 105), Reading(50, 48, 52), Reading(1000)])]
        far = [Reading(400, 380, 420), Reading(90, 85, 95), Reading(1000)]
        assert dominated_by(far, front, [MIN, MIN, MIN], cv=0.08) == 3

    def test_the_between_deployment_level_keeps_a_near_trial_going(self) -> None:
        """120 against 100 with tight intervals: behind within one deployment, not once 8 %
        between deployments is added; at 1 % it is."""
        front = [(0, [Reading(100, 99, 101)])]
        near = [Reading(120, 119, 121)]
        assert dominated_by(near, front, [MIN], cv=0.08) is None
        assert dominated_by(near, front, [MIN], cv=0.01) == 0

    def test_ahead_on_one_objective_is_not_dominated(self) -> None:
        front = [(0, [Reading(100, 95, 105), Reading(50, 48, 52)])]
        assert dominated_by([Reading(400, 380, 420), Reading(20, 19, 21)], front,
                            [MIN, MIN], cv=0.0) is None  # fmt: skip

    def test_level_on_the_others_is_enough(self) -> None:
        """Prefix caching off with salted first turns: far behind on HIT, level on MISS
        (within the 5 % margin, even a little ahead) and on VRAM."""
        front = [(0, [Reading(15, 14, 16), Reading(92, 91, 93), Reading(950)])]
        off = [Reading(100, 97, 103), Reading(90, 89, 91), Reading(950)]
        assert dominated_by(off, front, [MIN, MIN, MIN], cv=0.08) == 0
        better_miss = [Reading(100, 97, 103), Reading(80, 79, 81), Reading(950)]
        assert dominated_by(better_miss, front, [MIN, MIN, MIN], cv=0.08) is None

    def test_less_memory_is_not_dominated(self) -> None:
        """VRAM has no samples: a trial using clearly less memory keeps measuring, one using
        the same (within 2 %) does not."""
        front = [(0, [Reading(100, 95, 105), Reading(20_000)])]
        slow = Reading(400, 380, 420)
        assert dominated_by([slow, Reading(15_000)], front, [MIN, MIN], cv=0.0) is None
        assert dominated_by([slow, Reading(19_800)], front, [MIN, MIN], cv=0.0) == 0

    def test_maximised_objectives_flip(self) -> None:
        front = [(0, [Reading(100, 95, 105)])]
        assert dominated_by([Reading(20, 18, 22)], front, [MAX], cv=0.0) == 0
        assert dominated_by([Reading(400, 380, 420)], front, [MAX], cv=0.0) is None

    def test_nothing_sampled_says_nothing(self) -> None:
        assert dominated_by([Reading(30_000)], [(0, [Reading(10_000)])], [MIN], cv=0.0) is None


class TestRecentContender:
    def test_a_recent_point_near_the_best_first_objective(self) -> None:
        values = [[10.0, 5.0], [30.0, 1.0], [10.4, 9.0], [25.0, 2.0]]
        assert recent_contender(values, k=2, margin=0.05)  # 10.4 within 5 % of 10
        assert not recent_contender(values, k=1, margin=0.05)
        assert not recent_contender(values, k=2, margin=0.01)


class TestRecentGain:
    def test_a_new_best_point_is_a_gain(self) -> None:
        values = [[10.0, 10.0], [8.0, 12.0], [12.0, 8.0], [5.0, 5.0]]
        gain = recent_gain(values, values, k=1)
        assert gain is not None
        assert gain > 0.2

    def test_points_behind_the_front_add_nothing_until_their_optimistic_end_does(self) -> None:
        values = [[5.0, 5.0], [8.0, 12.0], [9.0, 9.0], [9.5, 9.5]]
        assert recent_gain(values, values, k=2) == 0.0
        lucky = [*values[:2], [4.0, 9.0], [9.5, 9.5]]  # the favourable end passes the front
        gain = recent_gain(values, lucky, k=2)
        assert gain is not None
        assert gain > 0

    def test_failed_deployments_count_and_add_nothing(self) -> None:
        nan = [math.nan, math.nan]
        values = [[5.0, 5.0], [8.0, 3.0], nan, nan]
        assert recent_gain(values, values, k=2) == 0.0
        assert recent_gain(values[:2], values[:2], k=2) is None  # too few to compare


# -- on the simulated engine ---------------------------------------------------------------


def _slow_prefill() -> Profile:
    """Prefill dear enough that prefix caching off is several times slower on HIT and MISS."""
    return fake_profile(per_token_ms=0.4)


def _objective(objective: ObjectiveFile) -> ObjectiveFile:
    """At least 4 conversations, up to 8 until the HIT median is within 1 %: a trial the early
    stop does not end measures 4 or more."""
    wl = objective.workload.model_copy(update={"conversations": 4, "max_conversations": 8})
    objectives = [o.model_copy(update={"precision": 0.01}) if o.name == "ttft_hit_ms" else o
                  for o in objective.objectives]  # fmt: skip
    return objective.model_copy(update={"workload": wl, "objectives": objectives})


def _runner(tmp_path: Path, space: SearchSpace, objective: ObjectiveFile, trials: int,
            seeds: tuple[Seed, ...] = (), **settings: Any) -> StudyRunner:  # fmt: skip
    return StudyRunner(paths=StudyPaths.create("s", tmp_path), space=space, seeds=seeds,
                       objective=objective, profile=_slow_prefill(),
                       settings=RunSettings(n_trials=trials, sampler_seed=1, **settings))  # fmt: skip


def _point(**change: Any) -> dict[str, Any]:
    return {**BASE_POINT, **change}


class TestDominatedStop:
    @pytest.fixture
    def obj(self, objective: ObjectiveFile) -> ObjectiveFile:
        return _objective(objective)

    def test_far_behind_stops_after_the_minimum_near_does_not(
        self, tmp_path: Path, space: SearchSpace, obj: ObjectiveFile
    ) -> None:
        """With the front set by a seed, prefix caching off stops after 2 conversations
        (stop_reason dominated, the front trial named, counted as a deployment); the same
        fast point at another memory share measures its minimum of 4 or more."""
        fast = Seed("fast", _point())
        _runner(tmp_path, space, obj, 1, seeds=(fast,)).run()
        study = load_study(StudyPaths.create("s", tmp_path))
        study.enqueue_trial(_point(enable_prefix_caching=False))
        study.enqueue_trial(_point(gpu_memory_utilization=0.9))
        result = _runner(tmp_path, space, obj, 3).run()
        assert result.deployed == 3
        far, near = load_study(StudyPaths.create("s", tmp_path)).trials[1:3]
        assert far.user_attrs["stop_reason"] == "dominated"
        assert far.user_attrs[Attr.DOMINATED_BY] == 0
        assert far.user_attrs["conversations"] == 2
        assert far.values[0] > 2 * study.trials[0].values[0]  # kept its figures
        assert near.user_attrs["stop_reason"] != "dominated"
        assert near.user_attrs["conversations"] >= 4
        md = write_report(load_study(StudyPaths.create("s", tmp_path)), tmp_path / "r")
        assert "stopped measuring once a front trial was ahead" in md["report_md"].read_text()
        assert "1 (behind 0)" in md["report_md"].read_text()

    def test_seeds_measure_in_full_and_the_stop_can_be_turned_off(
        self, tmp_path: Path, space: SearchSpace, obj: ObjectiveFile
    ) -> None:
        seeds = (Seed("fast", _point()), Seed("off", _point(enable_prefix_caching=False)))
        _runner(tmp_path, space, obj, 2, seeds=seeds).run()
        study = load_study(StudyPaths.create("s", tmp_path))
        study.enqueue_trial(_point(enable_prefix_caching=False, enable_chunked_prefill=False))
        _runner(tmp_path, space, obj, 3, early_stop=False).run()
        trials = load_study(StudyPaths.create("s", tmp_path)).trials
        assert trials[1].user_attrs["conversations"] >= 4  # a seed, far behind
        assert trials[2].user_attrs["conversations"] >= 4  # the stop off
        assert all(t.user_attrs["stop_reason"] != "dominated" for t in trials)

    def test_never_while_a_seed_is_still_waiting(
        self, tmp_path: Path, space: SearchSpace, obj: ObjectiveFile
    ) -> None:
        _runner(tmp_path, space, obj, 1, seeds=(Seed("fast", _point()),)).run()
        study = load_study(StudyPaths.create("s", tmp_path))
        study.enqueue_trial(_point(max_num_seqs=32), user_attrs={Attr.SEED_NAME: "later"})
        study.enqueue_trial(_point(enable_prefix_caching=False))
        later = study.ask()  # the seed, now running
        trial = study.ask()
        assert dominated_stop(study, trial, obj, []) is None
        study.tell(later, state=optuna.trial.TrialState.FAIL)
        assert dominated_stop(study, trial, obj, []) is not None
        assert dominated_stop(study, later, obj, []) is None  # a seed itself


class TestSettled:
    def _study(self, tmp_path: Path, space: SearchSpace, obj: ObjectiveFile) -> optuna.Study:
        """Every value of every dimension deployed once, one point each (the fake engine)."""
        points = [_point()]
        for d in space.dimensions:
            points += [_point(**{d.name: v}) for v in d.values if v != BASE_POINT[d.name]]
        runner = _runner(tmp_path, space, obj, len(points), settle=None)
        study = runner.open_study()
        for p in points:
            study.enqueue_trial(p)
        runner.run()
        return load_study(StudyPaths.create("s", tmp_path))

    def test_settles_once_recent_deployments_add_nothing(
        self, tmp_path: Path, space: SearchSpace, objective: ObjectiveFile
    ) -> None:
        obj = objective
        study = self._study(tmp_path, space, obj)
        runner = _runner(tmp_path, space, obj, 40)
        n = len(study.trials)
        # No gain is under 0 %; k as large as the study leaves nothing earlier to compare with.
        # share 1.0: any gain short of the whole volume (timing-measured figures vary with the
        # machine's load; the rule's arithmetic is TestRecentGain's)
        hv_only = Settle(after=4, share=1.0, contenders=None)
        verdict = settled(study, space, runner.valid, hv_only)
        assert verdict is not None
        assert verdict.deployments == n
        assert "settled after" in verdict.words()
        assert settled(study, space, runner.valid, Settle(4, 0.0, None)) is None
        assert settled(study, space, runner.valid, Settle(n, 1.0, None)) is None
        # On the fake engine every caching-on point is within a few % of the best HIT: the
        # last deployments are contenders, and the search goes on.
        assert settled(study, space, runner.valid, Settle(4, 1.0, contenders=0.5)) is None

    def test_not_before_every_value_was_deployed(
        self, tmp_path: Path, space: SearchSpace, objective: ObjectiveFile
    ) -> None:
        runner = _runner(tmp_path, space, objective, 6, settle=None)
        study = runner.open_study()
        for m in (0.9, 0.92, 0.95):
            for c in (False, True):
                study.enqueue_trial(_point(gpu_memory_utilization=m, enable_chunked_prefill=c))
        runner.run()
        study = load_study(StudyPaths.create("s", tmp_path))
        assert settled(study, space, runner.valid, Settle(2, 1.0, None)) is None

    def test_the_runner_stops_and_says_why(
        self, tmp_path: Path, space: SearchSpace, objective: ObjectiveFile
    ) -> None:
        self._study(tmp_path, space, objective)
        rule = Settle(after=4, share=1.0, contenders=None)
        result = _runner(tmp_path, space, objective, 40, settle=rule).run()
        study = load_study(StudyPaths.create("s", tmp_path))
        assert result.stop == "settled"
        assert result.new_trials == 0
        assert result.settled
        assert "settled after" in result.settled
        assert study.user_attrs["settled"]["after"] == 4
        md = write_report(study, tmp_path / "r")["report_md"].read_text()
        assert "The search ended before --trials: the search settled after" in md
