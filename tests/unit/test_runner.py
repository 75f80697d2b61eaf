"""The study loop against the fake deployer: seeds, dedup, constraints, failures, resume."""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from tuner.config import ObjectiveFile, Profile, ServerArgs
from tuner.config.seeds import Seed
from tuner.config.space import SearchSpace
from tuner.errors import ConfigError, StudyError
from tuner.study import RunSettings, StudyPaths, StudyRunner, load_study
from tuner.study.sampling import SamplerContext
from tuner.study.workers import worker_lease
from tuner.testing import fake_profile, interrupting, study_starts
from tuner.trial import Role, StoredTrial, deployments


def make_runner(
    tmp_path: Path,
    space: SearchSpace,
    seeds: Sequence[Seed],
    objective: ObjectiveFile,
    profile: Profile | None = None,
    trials: int = 5,
    **kw: Any,
) -> StudyRunner:
    return StudyRunner(
        paths=StudyPaths.create("s", tmp_path),
        space=space,
        seeds=tuple(seeds),
        objective=objective,
        profile=profile or fake_profile(),
        settings=RunSettings(n_trials=trials, sampler_seed=1),
        **kw,
    )


def by_seed(study: optuna.Study) -> dict[str, optuna.trial.FrozenTrial]:
    return {t.user_attrs["seed_name"]: t for t in study.trials if "seed_name" in t.user_attrs}


def seed(space: SearchSpace, name: str, **params: Any) -> Seed:
    base = {
        "gpu_memory_utilization": 0.95,
        "enable_prefix_caching": False,
        "enable_chunked_prefill": True,
        "max_num_seqs": None,
        "max_num_batched_tokens": None,
    }
    base.update(params)
    space.check(base)
    return Seed(name, base)


class TestSeedsAndDedup:
    def test_twelve_seeds_first_one_reused(
        self, tmp_path: Path, space: SearchSpace, seeds: tuple[Seed, ...], objective: ObjectiveFile
    ) -> None:
        """The 12 seeds run first, in the file's order; the two identical ones are queued as
        one trial carrying both names: 11 deployments, each seed name on a measured trial."""
        result = make_runner(tmp_path, space, seeds, objective, trials=11).run()
        study = load_study(StudyPaths.create("s", tmp_path))
        names = [n for t in study.trials for n in StoredTrial(t).seed_names]
        assert sorted(names) == sorted(s.name for s in seeds)
        assert [StoredTrial(t).seed_name for t in study.trials] == list(
            dict.fromkeys(s.name for s in seeds if s.name != "chunked_only_high_tokens")
        )
        assert result.deployed == 11 == len(study.trials)
        assert study_starts(tmp_path / "s") == 11
        twin = by_seed(study)["chunked_only_default"]
        assert twin.user_attrs["seed_aliases"] == ["chunked_only_high_tokens"]
        assert StoredTrial(twin).name == "chunked_only_default = chunked_only_high_tokens"

    def test_forty_distinct_deployments(
        self, tmp_path: Path, space: SearchSpace, seeds: tuple[Seed, ...], objective: ObjectiveFile
    ) -> None:
        """A 40-trial study over 192 points deploys 40 distinct configurations."""
        result = make_runner(tmp_path, space, seeds, objective, trials=40).run()
        study = load_study(StudyPaths.create("s", tmp_path))
        deployed = [t for t in study.trials if t.user_attrs.get("deployed")]
        assert result.deployed == 40 == len(deployed) == study_starts(tmp_path / "s")
        assert len({space.key(t.params) for t in deployed}) == 40
        # The default sampler never proposes a measured or known-invalid point, and the seed
        # that repeats another shares its trial: one trial per deployment.
        assert len(study.trials) == 40
        assert not [t for t in study.trials if t.user_attrs.get("reason") == "duplicate"]
        assert not [
            t
            for t in study.trials
            if "seed_name" not in t.user_attrs and not t.user_attrs.get("deployed")
        ]

    def test_plain_tpe_duplicates_are_not_redeployed(
        self, tmp_path: Path, space: SearchSpace, seeds: tuple[Seed, ...], objective: ObjectiveFile
    ) -> None:
        """Without FreshSampler, Optuna's TPE re-proposes measured points: those become failed
        'duplicate' trials (never deployed) and the fallback enqueues fresh neighbours."""
        runner = make_runner(tmp_path, space, seeds, objective, trials=30)
        runner.settings = RunSettings(
            n_trials=30, sampler_seed=1, sampler="tpe-independent", fresh=False
        )
        result = runner.run()
        study = load_study(StudyPaths.create("s", tmp_path))
        deployed = [t for t in study.trials if t.user_attrs.get("deployed")]
        assert result.deployed == 30 == len({space.key(t.params) for t in deployed})
        dups = [t for t in study.trials if t.user_attrs.get("reason") == "duplicate"]
        assert dups
        assert all(t.state == TrialState.FAIL and not t.user_attrs.get("deployed") for t in dups)
        assert any(t.user_attrs.get("fallback") for t in deployed)

    def test_resume_does_not_enqueue_seeds_twice(
        self, tmp_path: Path, space: SearchSpace, seeds: tuple[Seed, ...], objective: ObjectiveFile
    ) -> None:
        """Re-running resumes up to --trials; finished seeds are never enqueued again."""
        make_runner(tmp_path, space, seeds[:3], objective, trials=2).run()
        again = make_runner(tmp_path, space, seeds[:3], objective, trials=4).run()
        study = load_study(StudyPaths.create("s", tmp_path))
        names = [
            t.user_attrs.get("seed_name") for t in study.trials if t.user_attrs.get("seed_name")
        ]
        assert names == [s.name for s in seeds[:3]]
        assert again.deployed == 4
        assert study_starts(tmp_path / "s") == 4
        assert make_runner(tmp_path, space, seeds[:3], objective, trials=4).run().new_trials == 0

    def test_exhausted_space_stops(self, tmp_path: Path, objective: ObjectiveFile) -> None:
        """When every valid point is evaluated the study stops short of --trials."""
        from tuner.config.space import Dimension

        small = SearchSpace(
            "two",
            (
                Dimension(
                    "enable_prefix_caching",
                    (False, True),
                    "--enable-prefix-caching",
                    "--no-enable-prefix-caching",
                ),
            ),
        )
        result = make_runner(tmp_path, small, (), objective, trials=10).run()
        assert result.exhausted
        assert result.deployed == 2


class TestConstraints:
    def test_criteria_against_baseline(
        self, tmp_path: Path, space: SearchSpace, objective: ObjectiveFile
    ) -> None:
        """Baseline fails HIT <= 0.7x baseline; prefix caching meets all three criteria.

        A long prompt (~160 ms of modelled prefill) keeps the 20 % MISS margin above the
        scheduling noise of a loaded 2-core machine (600 words failed once under load)."""
        s = [
            seed(space, "baseline_reference", enable_chunked_prefill=False),
            seed(space, "prefix", enable_prefix_caching=True, enable_chunked_prefill=False),
        ]
        objective = objective.model_copy(
            update={"workload": objective.workload.model_copy(update={"system_prompt_words": 2500})}
        )
        make_runner(tmp_path, space, s, objective, trials=2).run()
        study = load_study(StudyPaths.create("s", tmp_path))
        t = by_seed(study)
        assert t["baseline_reference"].constraints["hit_vs_baseline"] == pytest.approx(0.3)
        assert t["baseline_reference"].constraints["miss_vs_baseline"] == pytest.approx(-0.2)
        assert all(v <= 0 for v in t["prefix"].constraints.values()), t["prefix"].constraints
        assert [b.number for b in study.best_trials] == [t["prefix"].number]


class TestFailures:
    def test_invalid_is_not_deployed(
        self, tmp_path: Path, space: SearchSpace, objective: ObjectiveFile
    ) -> None:
        """Chunked off with a budget below max_model_len fails as invalid without a server."""
        prof = Profile(
            name="f",
            server=ServerArgs(model="fake-model", max_model_len=131072),
            deployer=fake_profile().deployer,
        )
        s = [seed(space, "bad", enable_chunked_prefill=False, max_num_batched_tokens=8192)]
        make_runner(tmp_path, space, s, objective, profile=prof, trials=1).run()
        t = by_seed(load_study(StudyPaths.create("s", tmp_path)))["bad"]
        assert t.state == TrialState.FAIL
        assert t.user_attrs["reason"] == "invalid"
        assert "max_model_len (131072)" in t.user_attrs["error"]
        assert not t.user_attrs.get("deployed")
        # no server was started for it: every start belongs to another, deployed trial
        study = load_study(StudyPaths.create("s", tmp_path))
        deployed = [x for x in study.trials if x.user_attrs.get("deployed")]
        assert study_starts(tmp_path / "s") == len(deployed)
        assert not (tmp_path / "s" / "trials" / f"{t.number:04d}").exists()

    @pytest.mark.parametrize(
        ("deployer", "reason"),
        [
            ({"crash_when": [{"--max-num-seqs": "32"}]}, "crash"),
            ({"oom_when": [{"--max-num-seqs": "32"}]}, "oom"),
            ({"hang_when": [{"--max-num-seqs": "32"}], "health_timeout_s": 0.2}, "timeout"),
            ({"error_when": [{"--max-num-seqs": "32"}]}, "request_error"),
        ],
    )
    def test_failure_reasons(
        self,
        tmp_path: Path,
        space: SearchSpace,
        objective: ObjectiveFile,
        deployer: dict[str, Any],
        reason: str,
    ) -> None:
        """Each failure is a FAIL trial with its reason and log tail; the study goes on."""
        s = [seed(space, "bad", max_num_seqs=32), seed(space, "good")]
        result = make_runner(
            tmp_path, space, s, objective, profile=fake_profile(**deployer), trials=2
        ).run()
        t = by_seed(load_study(StudyPaths.create("s", tmp_path)))
        assert t["bad"].state == TrialState.FAIL
        assert t["bad"].user_attrs["reason"] == reason
        assert t["good"].state == TrialState.COMPLETE
        assert result.deployed == 2
        if reason in ("crash", "oom"):
            assert t["bad"].user_attrs["log_tail"]
            assert (Path(t["bad"].user_attrs["trial_dir"]) / "failure.json").exists()
        if reason == "crash":
            assert t["bad"].user_attrs["crash_retries"] == 1  # one redeploy before failing
            assert study_starts(tmp_path / "s") == 3

    def test_crash_once_then_success(
        self, tmp_path: Path, space: SearchSpace, objective: ObjectiveFile
    ) -> None:
        """A transient crash is redeployed once and the trial completes."""
        make_runner(
            tmp_path,
            space,
            [seed(space, "a")],
            objective,
            profile=fake_profile(flaky_crashes=1),
            trials=1,
        ).run()
        t = by_seed(load_study(StudyPaths.create("s", tmp_path)))["a"]
        assert t.state == TrialState.COMPLETE
        assert t.user_attrs["crash_retries"] == 1
        assert (Path(t.user_attrs["trial_dir"]) / "server.attempt1.log").exists()


class TestInterruptAndResume:
    def test_ctrl_c_marks_interrupted_and_resume_retries(
        self, tmp_path: Path, space: SearchSpace, objective: ObjectiveFile
    ) -> None:
        """Ctrl-C: server stopped, trial FAIL interrupted, DB intact; the same run resumes it."""
        s = [seed(space, "a"), seed(space, "b", max_num_seqs=64)]
        make_runner(tmp_path, space, s[:1], objective, trials=1).run()
        runner = make_runner(
            tmp_path, space, s, objective, trials=2, deployer_factory=interrupting(1)
        )
        with pytest.raises(KeyboardInterrupt):
            runner.run()
        study = load_study(StudyPaths.create("s", tmp_path))
        states = [
            (t.user_attrs.get("seed_name"), t.state, t.user_attrs.get("reason"))
            for t in study.trials
        ]
        assert ("a", TrialState.COMPLETE, None) in states
        assert ("b", TrialState.FAIL, "interrupted") in states
        result = make_runner(tmp_path, space, s, objective, trials=2).run()
        assert result.deployed == 2
        assert (
            by_seed(load_study(StudyPaths.create("s", tmp_path)))["b"].state == TrialState.COMPLETE
        )

    def test_an_interrupted_seed_runs_again_on_resume(
        self, tmp_path: Path, space: SearchSpace, objective: ObjectiveFile
    ) -> None:
        """Seeds a, b, c: Ctrl-C during b. On resume b is queued again and every seed runs
        before the sampler's first trial."""
        s = [seed(space, "a"), seed(space, "b", max_num_seqs=64), seed(space, "c", max_num_seqs=32)]
        make_runner(tmp_path, space, s[:1], objective, trials=1).run()
        with pytest.raises(KeyboardInterrupt):
            make_runner(tmp_path, space, s, objective, trials=3,
                        deployer_factory=interrupting(1)).run()  # fmt: skip
        make_runner(tmp_path, space, s, objective, trials=4).run()
        study = load_study(StudyPaths.create("s", tmp_path))
        done = [t for t in study.trials if t.state == TrialState.COMPLETE]
        assert sorted(StoredTrial(t).seed_name or "" for t in done[:3]) == ["a", "b", "c"]
        assert StoredTrial(done[3]).role != Role.SEED

    def test_stale_running_trial_is_recovered(
        self, tmp_path: Path, space: SearchSpace, objective: ObjectiveFile
    ) -> None:
        """A RUNNING trial left by a killed run is marked interrupted at the next start."""
        runner = make_runner(tmp_path, space, [], objective, trials=1)
        study = runner.open_study()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # heartbeats outside optimize
            study.ask()  # RUNNING, then the process "dies"
        runner.run()
        stale = load_study(StudyPaths.create("s", tmp_path)).trials[0]
        assert stale.state == TrialState.FAIL
        assert stale.user_attrs["reason"] == "interrupted"

    def test_other_space_is_refused(
        self, tmp_path: Path, space: SearchSpace, objective: ObjectiveFile
    ) -> None:
        """Resuming a study with another space is a clear error, not a corrupted study."""
        make_runner(tmp_path, space, [], objective, trials=1).run()
        other = SearchSpace("other", space.dimensions)
        with pytest.raises(StudyError, match="created with space 'seed_192'"):
            make_runner(tmp_path, other, [], objective, trials=1).run()


class TestEnvironmentFaults:
    @pytest.mark.parametrize("fault", ["port", "disk"])
    def test_the_machines_fault_stops_the_study_and_is_retried(
        self, tmp_path: Path, space: SearchSpace, objective: ObjectiveFile, fault: str
    ) -> None:
        """A taken port or a full disk on the first start: the study stops with one line, the
        trial is `env` (not a deployment, nothing recorded against the point); the resumed
        study deploys that same seed and reaches its target."""
        from tuner.errors import EnvironmentFault

        s = [seed(space, "a"), seed(space, "b", max_num_seqs=64)]
        broken = fake_profile(env_faults=1, env_fault=fault)
        with pytest.raises(EnvironmentFault, match="in use|disk full"):
            make_runner(tmp_path, space, s, objective, profile=broken, trials=2).run()
        study = load_study(StudyPaths.create("s", tmp_path))
        t, queued = study.trials  # seed b still queued
        assert queued.state == TrialState.WAITING
        assert t.state == TrialState.FAIL
        assert t.user_attrs["reason"] == "env"
        assert t.user_attrs["deployed"] is False
        result = make_runner(tmp_path, space, s, objective, profile=broken, trials=2).run()
        assert result.deployed == 2
        study = load_study(StudyPaths.create("s", tmp_path))
        assert by_seed(study)["a"].state == TrialState.COMPLETE
        assert sum(1 for t in study.trials if t.state == TrialState.COMPLETE) == 2


class TestSweep:
    SPACE = """\
name: small
dimensions:
  gpu_memory_utilization: {values: [0.9, 0.95], flag: --gpu-memory-utilization}
  enable_chunked_prefill:
    values: [false, true]
    flag: --enable-chunked-prefill
    negative_flag: --no-enable-chunked-prefill
  max_num_batched_tokens: {values: [null, 2048], flag: --max-num-batched-tokens}
"""

    def test_grid_evaluates_every_valid_point_once_and_resumes(
        self, tmp_path: Path, objective: ObjectiveFile
    ) -> None:
        """tuner sweep: GridSampler visits each valid point exactly once; invalid ones are
        rejected without deploying; a second run finds nothing left to do."""
        from tuner.config import load_space

        (tmp_path / "small.yaml").write_text(self.SPACE)
        small = load_space(tmp_path / "small.yaml")

        def run() -> Any:
            return StudyRunner(
                paths=StudyPaths.create("sw", tmp_path),
                space=small,
                seeds=(),
                objective=objective,
                profile=fake_profile(),
                settings=RunSettings(n_trials=6, enqueue_seeds=False, sampler="grid"),
            ).run()

        result = run()
        # 8 points; chunked off with a 2048 budget < max_model_len 4096 is invalid: 2 points
        assert result.deployed == 6 == study_starts(tmp_path / "sw")
        study = load_study(StudyPaths.create("sw", tmp_path))
        done = [t for t in study.trials if t.state == TrialState.COMPLETE]
        assert len({small.key(t.params) for t in done}) == 6 == len(done)
        invalid = [t for t in study.trials if t.user_attrs.get("reason") == "invalid"]
        assert {small.key(t.params) for t in invalid} == {
            small.key(p)
            for p in small.points()
            if p["enable_chunked_prefill"] is False and p["max_num_batched_tokens"] == 2048
        }
        again = run()
        assert again.new_trials == 0
        assert study_starts(tmp_path / "sw") == 6


class TestResumeUnderOtherSettings:
    def test_changed_objective_is_refused_unless_forced(
        self, tmp_path: Path, space: SearchSpace, objective: ObjectiveFile
    ) -> None:
        """Resuming with another workload (or server) would rank incomparable trials together:
        refused with the differences; --force resumes; the same settings resume silently."""
        make_runner(tmp_path, space, (), objective, trials=1).run()
        assert make_runner(tmp_path, space, (), objective, trials=1).run().new_trials == 0
        longer = objective.model_copy(
            update={"workload": objective.workload.model_copy(update={"conversations": 5})}
        )
        with pytest.raises(StudyError, match=r"objective\.workload\.conversations: 3 -> 5"):
            make_runner(tmp_path, space, (), longer, trials=2).run()
        other = fake_profile().model_copy(
            update={"server": ServerArgs(model="fake-model", max_model_len=8192)}
        )
        with pytest.raises(StudyError, match=r"profile\.server"):
            make_runner(tmp_path, space, (), objective, profile=other, trials=2).run()
        forced = make_runner(tmp_path, space, (), longer, trials=2)
        forced.settings = RunSettings(n_trials=2, sampler_seed=1, force=True)
        assert forced.run().deployed == 2


class TestCoverage:
    def test_after_the_seeds_an_unseen_value_gets_its_try(
        self, tmp_path: Path, space: SearchSpace, objective: ObjectiveFile
    ) -> None:
        """The seeds leave values unseen (memory 0.90, every token budget): right after them,
        one is tried (memory's extreme first) as a one-flag change of a seed on the front; then
        the sampler gets its turn (they alternate); only a try that became the best HIT may be
        carried at once (where there is a point to carry it to)."""
        s = [seed(space, "a"), seed(space, "b", enable_prefix_caching=True)]
        make_runner(tmp_path, space, s, objective, trials=4).run()
        study = load_study(StudyPaths.create("s", tmp_path))
        third, fourth = study.trials[2], study.trials[3]
        name, value = third.user_attrs["coverage"]
        assert (name, json.loads(value)) == ("gpu_memory_utilization", 0.9)
        assert all(t.params[name] != 0.9 for t in study.trials[:2])
        diffs = [
            {k for k in third.params if third.params[k] != t.params[k]} for t in study.trials[:2]
        ]
        assert {name} in diffs  # one flag away from a seed
        assert "coverage" not in fourth.user_attrs
        # The simulated server's timings decide whether the try is the fastest so far.
        clear = third.values[0] < min(t.values[0] for t in study.trials[:2])
        allowed = ([name, value], None) if clear else (None,)
        assert fourth.user_attrs.get("carries") in allowed

    def test_a_worker_does_not_wait_for_a_trial_under_way(
        self, tmp_path: Path, space: SearchSpace, objective: ObjectiveFile
    ) -> None:
        """Another live worker has drawn its point with one deployment to go: this worker
        neither waits nor steps back, it deploys too (``MaxTrialsCallback``: the target counts
        finished deployments, and up to N-1 trials in flight finish past it)."""
        runner = make_runner(tmp_path, space, [], objective, trials=1)
        runner.settings = RunSettings(n_trials=1, sampler_seed=1, exclusive=False)
        runner.open_study()
        study = load_study(runner.paths)  # the other worker's view, with a plain sampler
        with worker_lease(runner.paths.root) as other, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # heartbeats outside optimize
            trial = study.ask()
            trial.set_user_attr("worker", other)
            for d in space.dimensions:
                trial.suggest_categorical(d.name, list(d.values))
            result = runner.run()
            trial.set_user_attr("deployed", True)
            study.tell(trial, [1.0] * len(study.directions))
        assert result.deployed == 1
        assert len(result.outcomes) == 1
        assert deployments(load_study(runner.paths).trials) == 2  # one past the target


def _threads(work: Callable[[], None], n: int) -> list[BaseException]:
    """Run ``work`` in ``n`` threads (workers of one study); the errors they raised."""
    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller's assert
            errors.append(exc)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # heartbeats outside optimize
        threads = [threading.Thread(target=guarded, daemon=True) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a worker never finished"
    return errors


class TestSharedStudy:
    """Workers (``--workers``) on one study, as threads of this process."""

    def test_four_workers_show_no_failure_that_is_not_one(
        self, tmp_path: Path, space: SearchSpace, seeds: tuple[Seed, ...], objective: ObjectiveFile
    ) -> None:
        """``--workers 4 --trials 15`` on the simulated server: 15 to 18 deployments (up to 3
        in flight finish past the target), every seed once, and no failed trial that is not
        the configuration's failure (no 'taken', no 'surplus', no wait)."""

        def runner() -> StudyRunner:
            r = make_runner(tmp_path, space, seeds, objective)
            r.settings = RunSettings(n_trials=15, enqueue_seeds=False, exclusive=False,
                                     sampler_seed=None)  # fmt: skip
            return r

        assert runner().queue_seeds() == 11
        assert _threads(lambda: runner().run(), 4) == []
        study = load_study(StudyPaths.create("s", tmp_path))
        views = [StoredTrial(t) for t in study.trials]
        assert 15 <= deployments(study.trials) <= 18
        assert all(v.is_failure for v in views if v.trial.state == TrialState.FAIL)
        assert all(v.reason is None or v.reason.is_failure for v in views)
        names = [n for v in views for n in v.seed_names]
        assert sorted(names) == sorted(s.name for s in seeds)
        assert len({v.trial.user_attrs.get("worker") for v in views}) == 4

    def test_a_point_drawn_twice_at_once_is_a_replicate(
        self, tmp_path: Path, space: SearchSpace, objective: ObjectiveFile
    ) -> None:
        """Two workers draw the same point in the same instant (held at a barrier after the
        draw): both deploy it and both measurements are kept, as two deployments of one
        configuration (the noise model pools them); neither is failed."""
        both_drawn = threading.Barrier(2, timeout=30)

        class Stuck(optuna.samplers.RandomSampler):
            def sample_independent(self, study: Any, trial: Any, name: str, dist: Any) -> Any:
                return dist.choices[0]  # every worker draws the same point

        def stuck(ctx: SamplerContext) -> optuna.samplers.BaseSampler:
            return Stuck(seed=0)

        def runner() -> StudyRunner:
            r = make_runner(tmp_path, space, [], objective, sampler_factory=stuck,
                            on_trial_start=lambda *_: both_drawn.wait())  # fmt: skip
            r.settings = RunSettings(n_trials=1, exclusive=False, sampler="random")
            return r

        runner().open_study()
        assert _threads(lambda: runner().run(), 2) == []
        study = load_study(StudyPaths.create("s", tmp_path))
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
        assert len({space.key(t.params) for t in study.trials}) == 1
        assert deployments(study.trials) == 2


class TestStopWhenMet:
    """--stop-when-met: after the seeds, a trial meeting the criteria with precise enough
    intervals ends the search (the mission stopped after phase 1 once a config met its goals)."""

    @staticmethod
    def _setup(
        space: SearchSpace, objective: ObjectiveFile, precision: float | None
    ) -> tuple[list[Seed], ObjectiveFile]:
        s = [
            seed(space, "baseline_reference", enable_chunked_prefill=False),
            seed(space, "prefix", enable_prefix_caching=True, enable_chunked_prefill=False),
        ]
        specs = [
            o.model_copy(update={"precision": precision}) if o.name == "ttft_hit_ms" else o
            for o in objective.objectives
        ]
        # the long prompt of test_criteria_against_baseline: prefix caching meets all three
        workload = objective.workload.model_copy(update={"system_prompt_words": 2500})
        return s, objective.model_copy(update={"objectives": specs, "workload": workload})

    @staticmethod
    def _runner(
        tmp_path: Path, space: SearchSpace, s: list[Seed], objective: ObjectiveFile
    ) -> StudyRunner:
        runner = make_runner(tmp_path, space, s, objective)
        runner.settings = RunSettings(n_trials=4, sampler_seed=1, stop_when_met=True)
        return runner

    def test_the_search_ends_once_the_goal_is_met(
        self, tmp_path: Path, space: SearchSpace, objective: ObjectiveFile
    ) -> None:
        s, obj = self._setup(space, objective, precision=0.9)
        result = self._runner(tmp_path, space, s, obj).run()
        study = load_study(StudyPaths.create("s", tmp_path))
        prefix = by_seed(study)["prefix"]
        assert (result.deployed, result.goal_met) == (2, prefix.number)
        assert study.user_attrs["goal_met"] == {"trial": prefix.number, "deployments": 2}

    def test_too_wide_an_interval_does_not_stop_it(
        self, tmp_path: Path, space: SearchSpace, objective: ObjectiveFile
    ) -> None:
        """The same trials, measured to +-0.01 % they are not: the search goes on to --trials."""
        s, obj = self._setup(space, objective, precision=0.0001)
        result = self._runner(tmp_path, space, s, obj).run()
        assert (result.deployed, result.goal_met) == (4, None)

    def test_without_a_precision_it_is_refused_before_any_deployment(
        self, tmp_path: Path, space: SearchSpace, objective: ObjectiveFile
    ) -> None:
        s, obj = self._setup(space, objective, precision=None)
        with pytest.raises(ConfigError, match="precision"):
            self._runner(tmp_path, space, s, obj).run()
        assert not StudyPaths.create("s", tmp_path).trial_dir(0).exists()  # nothing deployed
