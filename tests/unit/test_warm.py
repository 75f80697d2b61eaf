"""--warm-start: the key that says whether two studies' measurements compare, copying from a
study with the same key, queueing a related study's front, and a resume that copies nothing
twice (on the simulated engine)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest

from tests.conftest import BASE_POINT
from tuner.config import ObjectiveFile, Profile
from tuner.config.seeds import Seed
from tuner.config.space import SearchSpace
from tuner.errors import ConfigError
from tuner.study import RunSettings, StudyPaths, StudyRunner, load_study
from tuner.study.warm import key_differences, measured_with
from tuner.testing import fake_profile, interrupting, study_starts
from tuner.trial import Attr, Role, StoredTrial, StudyAttr, deployments

SEEDS = (
    Seed("base", BASE_POINT),
    Seed("low_mem", {**BASE_POINT, "gpu_memory_utilization": 0.9}),
    Seed("no_cache", {**BASE_POINT, "enable_prefix_caching": False}),
    Seed("seqs_32", {**BASE_POINT, "max_num_seqs": 32}),  # scripted to OOM
)


def _profile() -> Profile:
    return fake_profile(oom_when=[{"--max-num-seqs": "32"}])


def _runner(tmp_path: Path, name: str, space: SearchSpace, objective: ObjectiveFile,
            trials: int, warm: tuple[str, ...] = (), **kw: Any) -> StudyRunner:  # fmt: skip
    return StudyRunner(paths=StudyPaths.create(name, tmp_path), space=space, seeds=SEEDS,
                       objective=objective, profile=kw.pop("profile", _profile()),
                       settings=RunSettings(n_trials=trials, sampler_seed=1, warm_start=warm,
                                            settle=None),
                       **kw)  # fmt: skip


def _study(tmp_path: Path, name: str) -> optuna.Study:
    return load_study(StudyPaths.create(name, tmp_path))


class TestKey:
    def test_the_key_names_what_differs(self, objective: ObjectiveFile) -> None:
        a = measured_with(objective, _profile())
        assert key_differences(a, dict(a)) == []
        assert key_differences(a, {**a, "build": "vllm 0.26.0"}) == ["build"]
        other_load = objective.model_copy(
            update={"workload": objective.workload.model_copy(update={"seed": 99})}
        )
        assert key_differences(a, measured_with(other_load, _profile())) == ["workload"]
        assert key_differences(a, {**a, "machine": "1 x NVIDIA H200"}) == ["machine"]

    def test_an_unknown_build_never_matches(self, objective: ObjectiveFile) -> None:
        a = {**measured_with(objective, _profile()), "build": None}
        assert key_differences(a, dict(a)) == ["build"]


class TestWarmStart:
    def test_copied_points_are_not_deployed_again_and_a_resume_copies_nothing_twice(
        self, tmp_path: Path, space: SearchSpace, objective: ObjectiveFile
    ) -> None:
        _runner(tmp_path, "a", space, objective, 4).run()
        a = _study(tmp_path, "a")
        assert deployments(a.trials) == 4
        result = _runner(tmp_path, "b", space, objective, 2, warm=("a",)).run()
        b = _study(tmp_path, "b")
        warm = [t for t in b.trials if StoredTrial(t).role == Role.WARM]
        assert len(warm) == 4  # 3 measured + the OOM
        assert {t.user_attrs[Attr.WARM_FROM] for t in warm} == {f"a#{n}" for n in range(4)}
        assert sum(t.state == optuna.trial.TrialState.FAIL for t in warm) == 1
        assert result.deployed == 2 == deployments(b.trials)
        assert study_starts(tmp_path / "b") == 2  # the seeds were answered from the copies
        seeds = [t for t in b.trials if StoredTrial(t).seed_name]
        assert all(not StoredTrial(t).deployed for t in seeds)
        # Interrupted, then resumed: nothing copied twice, the target reached.
        with pytest.raises(KeyboardInterrupt):
            _runner(tmp_path, "b", space, objective, 4, warm=("a",),
                    deployer_factory=interrupting(1)).run()  # fmt: skip
        _runner(tmp_path, "b", space, objective, 4, warm=("a",)).run()
        b = _study(tmp_path, "b")
        assert len([t for t in b.trials if Attr.WARM_FROM in t.user_attrs]) == 4
        assert deployments(b.trials) == 4
        keys = [space.key(t.params) for t in b.trials if StoredTrial(t).is_deployment]
        assert len(keys) == len(set(keys))  # no point deployed twice

    def test_a_related_study_s_front_is_queued_first(
        self, tmp_path: Path, space: SearchSpace, objective: ObjectiveFile
    ) -> None:
        """Another load: nothing copied, the other study's front deployed first."""
        _runner(tmp_path, "a", space, objective, 4).run()
        front = {space.key(t.params) for t in _study(tmp_path, "a").best_trials}
        other = objective.model_copy(
            update={"workload": objective.workload.model_copy(update={"seed": 99})}
        )
        _runner(tmp_path, "c", space, other, len(front), warm=("a",)).run()
        c = _study(tmp_path, "c")
        first = c.trials[: len(front)]
        assert {space.key(t.params) for t in first} == front
        assert all(StoredTrial(t).role == Role.WARM and StoredTrial(t).deployed for t in first)

    def test_another_build_is_refused_in_one_line_writing_nothing(
        self, tmp_path: Path, space: SearchSpace, objective: ObjectiveFile
    ) -> None:
        _runner(tmp_path, "a", space, objective, 2).run()
        slower = fake_profile(oom_when=[{"--max-num-seqs": "32"}], per_token_ms=0.5)
        runner = _runner(tmp_path, "d", space, objective, 2, warm=("a",), profile=slower)
        with pytest.raises(ConfigError) as exc:
            runner.run()
        assert "build" in str(exc.value)
        assert "\n" not in str(exc.value)
        d = _study(tmp_path, "d")
        assert not d.trials
        assert (
            d.user_attrs[StudyAttr.MEASURED_WITH]["build"]
            != (_study(tmp_path, "a").user_attrs[StudyAttr.MEASURED_WITH]["build"])
        )
