"""Validation rounds on the simulated and replay deployers: plan, held-out conversations,
interrupt and resume, the validated pick and a pick that does not hold."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import ROOT
from tuner.config import ObjectiveFile, Profile, ReplayConfig, ServerArgs
from tuner.config.seeds import Seed
from tuner.config.space import SearchSpace
from tuner.decide import baseline_trial
from tuner.report import recommend
from tuner.report.headline import headline
from tuner.report.recommend import Recommendation
from tuner.schema import MeasurementsDoc, RequestRecord, TrialFolder
from tuner.study import (
    RunSettings,
    StudyPaths,
    StudyRunner,
    ValidationSettings,
    Validator,
    default_extra,
    load_study,
)
from tuner.study._trial import TrialOutcome
from tuner.testing import fake_profile, interrupting


def _search(root: Path, space: SearchSpace, seeds: Sequence[Seed], obj: ObjectiveFile,
            profile: Profile, n: int) -> StudyPaths:  # fmt: skip
    paths = StudyPaths.create("v", root)
    StudyRunner(
        paths=paths,
        space=space,
        seeds=tuple(seeds),
        objective=obj,
        profile=profile,
        settings=RunSettings(n_trials=n, sampler_seed=0),
    ).run()
    return paths


def _validator(paths: StudyPaths, space: SearchSpace, obj: ObjectiveFile, profile: Profile,
               **kw: Any) -> Validator:  # fmt: skip
    study = load_study(paths)
    rec = recommend(study, root=paths.root, use_validation=False)
    assert rec is not None
    base = baseline_trial(study)
    assert base is not None
    # the search's pick (another measured configuration when the pick is the baseline, as the
    # fake's timing noise can make it), another measured configuration (the front's size is
    # the noise's call), and the baseline
    measured = [
        t
        for t in study.trials
        if t.state == TrialState.COMPLETE
        and t.number != base.number
        and "duplicate_of" not in t.user_attrs
    ]
    pick = rec.trial if rec.trial.number != base.number else measured[0]
    other = next(t for t in measured if t.number != pick.number)
    return Validator(
        paths=paths,
        space=space,
        objective=obj,
        profile=profile,
        candidates=[pick, other, base],
        settings=ValidationSettings(rounds=2, extra=0),
        **kw,
    )


def _validation(paths: StudyPaths) -> optuna.Study:
    return optuna.load_study(study_name="v.validation", storage=paths.storage_url)


def test_rounds_are_interleaved_and_held_out(
    tmp_path: Path, space: SearchSpace, seeds: tuple[Seed, ...], objective: ObjectiveFile
) -> None:
    """Top 2 + baseline, 2 rounds: 6 fresh deployments in the order A B base A B base, in the
    linked study, on another workload seed; the report's pick comes from them."""
    profile = fake_profile()
    paths = _search(tmp_path, space, seeds, objective, profile, 5)
    result = _validator(paths, space, objective, profile).run()
    assert (result.planned, result.done) == (6, 6)
    val = _validation(paths)
    assert [t.state for t in val.trials] == [TrialState.COMPLETE] * 6
    order = [(t.user_attrs["round"], t.user_attrs["candidate"]) for t in val.trials]
    cands = [c for _, c in order[:3]]
    assert order == [(r, c) for r in (0, 1) for c in cands]
    assert val.user_attrs["workload_seed"] == objective.workload.seed + 1
    assert all(t.user_attrs["phase"] == "validation" for t in val.trials)
    folder = TrialFolder.of(paths.root / "validation", 0)
    assert folder.read_measurements().samples
    rec = recommend(load_study(paths), root=paths.root)
    assert rec is not None
    assert rec.validation is not None
    assert rec.validation.pick is not None
    assert rec.trial.number == rec.validation.pick.candidate.number
    assert rec.explanation.startswith("Validated pick: trial")
    assert len(rec.validation.pick.per_deployment) == 2


def test_interrupt_then_resume(
    tmp_path: Path, space: SearchSpace, seeds: tuple[Seed, ...], objective: ObjectiveFile
) -> None:
    """Ctrl-C on the third deployment: two done, the third 'interrupted'; the same call again
    runs the four left (the interrupted one again), nothing twice."""
    profile = fake_profile()
    paths = _search(tmp_path, space, seeds, objective, profile, 4)
    with pytest.raises(KeyboardInterrupt):
        _validator(paths, space, objective, profile, deployer_factory=interrupting(3)).run()
    val = _validation(paths)
    assert [t.state for t in val.trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL]
    assert val.trials[2].user_attrs["reason"] == "interrupted"
    again = _validator(paths, space, objective, profile).run()
    assert (again.planned, again.done, len(again.outcomes)) == (6, 6, 4)
    val = _validation(paths)
    done = [(t.user_attrs["round"], t.user_attrs["candidate"]) for t in val.trials
            if t.state == TrialState.COMPLETE]  # fmt: skip
    assert len(done) == len(set(done)) == 6


def test_replayed_candidates(tmp_path: Path, space: SearchSpace, seeds: tuple[Seed, ...],
                             objective: ObjectiveFile) -> None:  # fmt: skip
    """On the replay deployer (recorded H100 latencies, 1/100 of real time) each validation
    deployment of a candidate draws its own recorded samples."""
    surface = ROOT / "benchmarks" / "data" / "h100_llama6b.json"
    profile = Profile(
        name="replay",
        server=ServerArgs(model="m", max_model_len=16384),
        deployer=ReplayConfig(surface=surface, time_scale=0.01),
    )
    paths = _search(tmp_path, space, seeds[:4], objective, profile, 4)
    result = _validator(paths, space, objective, profile).run()
    assert result.done == 6
    by_cand: dict[int, list[list[float | None]]] = {}
    for t in _validation(paths).trials:
        doc = TrialFolder(Path(t.user_attrs["trial_dir"])).read_measurements()
        draws = [x.server_ttft_ms for x in doc.samples if x.kind == "hit"]
        by_cand.setdefault(t.user_attrs["candidate"], []).append(draws)
    assert all(len(v) == 2 for v in by_cand.values())
    assert any(a != b for a, b in by_cand.values())


def _scripted(hit_by_candidate: dict[int, float]) -> Any:
    """A validation evaluator that measures each candidate at a scripted HIT (no server)."""
    rng = np.random.default_rng(0)

    def evaluate(study: optuna.Study, trial: optuna.Trial, *, trial_dir: Path, flags: list[str],
                 **_: Any) -> TrialOutcome:  # fmt: skip
        hit = list(rng.normal(hit_by_candidate[trial.user_attrs["candidate"]], 2.0, 20))
        recs = [RequestRecord(i, 1, "hit", x, x, 10, 2, 0.0, 0.0, 0.0, None)
                for i, x in enumerate(hit)]  # fmt: skip
        TrialFolder(trial_dir).write_measurements(
            MeasurementsDoc(
                trial=trial.number,
                params=dict(trial.params),
                flags=flags,
                startup_s=0.0,
                summary={},
                samples=recs,
            )  # fmt: skip
        )
        trial.set_user_attr("vram_mib", 1000.0)
        study.tell(trial, [float(np.median(hit)), 200.0, 1000.0])
        return TrialOutcome(trial.number, dict(trial.params), "complete", deployed=True)

    return evaluate


def _validated_at(
    tmp_path: Path, space: SearchSpace, seeds: tuple[Seed, ...], objective: ObjectiveFile,
    hits: tuple[float, float, float],
) -> tuple[Recommendation, StudyPaths, tuple[int, int, int]]:  # fmt: skip
    """A 5-deployment search, then validation of its pick, a runner-up and the baseline
    measured at the scripted ``hits`` (in that order); the final recommendation."""
    profile = fake_profile()
    paths = _search(tmp_path, space, seeds, objective, profile, 5)
    pick, runner, base = (c.number for c in _validator(paths, space, objective, profile).candidates)
    script = dict(zip((pick, runner, base), hits, strict=True))
    _validator(paths, space, objective, profile, evaluator=_scripted(script)).run()
    final = recommend(load_study(paths), root=paths.root)
    assert final is not None
    assert final.validation is not None
    return final, paths, (pick, runner, base)


def test_a_pick_that_does_not_hold_is_flagged(
    tmp_path: Path, space: SearchSpace, seeds: tuple[Seed, ...], objective: ObjectiveFile
) -> None:
    """When the search's pick measures slower than a runner-up beyond the noise on fresh
    deployments, the runner-up is recommended and the report says the pick did not hold."""
    final, _, (_, runner, _) = _validated_at(
        tmp_path, space, seeds, objective, (150.0, 100.0, 300.0)
    )
    assert final.validation is not None
    assert final.trial.number == runner
    assert final.validation.held is False
    assert "did NOT hold" in final.explanation
    assert any("did not hold" in n for n in final.notes)


def test_the_baseline_stays_unless_a_candidate_beats_it_beyond_the_noise(
    tmp_path: Path, space: SearchSpace, seeds: tuple[Seed, ...], objective: ObjectiveFile
) -> None:
    """Fresh deployments put the baseline level with the fastest candidate (within the
    noise between deployments): the recommendation is to change nothing, and says so. A
    candidate far ahead of it is still recommended (the test above)."""
    final, paths, (_, _, base) = _validated_at(
        tmp_path, space, seeds, objective, (100.0, 130.0, 103.0)
    )
    assert final.validation is not None
    assert final.trial.number == base
    assert final.validation.kept is not None
    assert final.validation.kept[0] < 0 < final.validation.kept[1]
    assert "keep the baseline" in final.explanation
    lines = headline(load_study(paths), final, paths.root)
    assert lines[0].label == "Keep"
    assert final.validation.held is None  # the baseline is no candidate that could hold
    assert "pick held" not in lines[-1].text


def _adaptive(paths: StudyPaths, space: SearchSpace, obj: ObjectiveFile, profile: Profile,
              extra: int, evaluator: Any) -> Validator:  # fmt: skip
    validator = _validator(paths, space, obj, profile, evaluator=evaluator)
    return Validator(
        paths=paths,
        space=space,
        objective=obj,
        profile=profile,
        candidates=validator.candidates,
        settings=ValidationSettings(rounds=2, extra=extra),
        evaluator=evaluator,
    )


def _scripted_search(tmp_path: Path, space: SearchSpace, seeds: tuple[Seed, ...],
                     objective: ObjectiveFile, runner_ms: float) -> Any:  # fmt: skip
    """A 5-trial search, then a script measuring its pick at 100 ms, the runner-up at
    ``runner_ms`` and the baseline at 300 ms: (paths, profile, candidates, script)."""
    profile = fake_profile()
    paths = _search(tmp_path, space, seeds, objective, profile, 5)
    cands = tuple(c.number for c in _validator(paths, space, objective, profile).candidates)
    pick, runner, base = cands
    return paths, profile, cands, _scripted({pick: 100.0, runner: runner_ms, base: 300.0})


def _deployed(paths: StudyPaths) -> list[tuple[int, int]]:
    return [(t.user_attrs["round"], t.user_attrs["candidate"]) for t in _validation(paths).trials
            if t.state == TrialState.COMPLETE]  # fmt: skip


def test_adaptive_rounds_go_to_the_candidates_still_tied(
    tmp_path: Path, space: SearchSpace, seeds: tuple[Seed, ...], objective: ObjectiveFile
) -> None:
    """Two candidates measuring alike stay tied after the 2 fixed rounds: the 3 extra
    deployments go to them (fastest first), never to the baseline, and the report counts
    9 of 9 deployments."""
    paths, profile, (pick, runner, _), script = _scripted_search(tmp_path, space, seeds,
                                                                  objective, 100.0)  # fmt: skip
    result = _adaptive(paths, space, objective, profile, 3, script).run()
    assert (result.planned, result.done) == (9, 9)
    later = [(r, c) for r, c in _deployed(paths) if r >= 2]
    assert [r for r, _ in later] == [2, 2, 3]
    assert {c for _, c in later} == {pick, runner}
    final = recommend(load_study(paths), root=paths.root)
    assert final is not None
    assert final.validation is not None
    assert (final.validation.planned, final.validation.done) == (9, 9)
    assert "planned" not in final.validation.words()


def test_a_clear_winner_ends_adaptive_rounds(
    tmp_path: Path, space: SearchSpace, seeds: tuple[Seed, ...], objective: ObjectiveFile
) -> None:
    """A candidate 50 % slower is told apart on the fixed rounds: no extra deployment."""
    paths, profile, _, script = _scripted_search(tmp_path, space, seeds, objective, 150.0)
    result = _adaptive(paths, space, objective, profile, 4, script).run()
    assert (result.planned, result.done) == (6, 6)
    assert max(r for r, _ in _deployed(paths)) == 1


def test_an_adaptive_round_interrupted_resumes_the_same_plan(
    tmp_path: Path, space: SearchSpace, seeds: tuple[Seed, ...], objective: ObjectiveFile
) -> None:
    """Ctrl-C on the first extra deployment; the same call again plans the same round from
    the rounds before it and deploys nothing twice."""
    paths, profile, _, script = _scripted_search(tmp_path, space, seeds, objective, 100.0)
    calls = 0

    def interrupt_on_seventh(*args: Any, **kw: Any) -> TrialOutcome:
        nonlocal calls
        calls += 1
        if calls == 7:
            raise KeyboardInterrupt
        result: TrialOutcome = script(*args, **kw)
        return result

    with pytest.raises(KeyboardInterrupt):
        _adaptive(paths, space, objective, profile, 3, interrupt_on_seventh).run()
    assert len(_deployed(paths)) == 6
    again = _adaptive(paths, space, objective, profile, 3, script).run()
    assert (again.planned, again.done, len(again.outcomes)) == (9, 9, 3)
    done = _deployed(paths)
    assert len(done) == len(set(done)) == 9


@pytest.mark.parametrize(
    ("extra", "deployed", "candidates", "expected"),
    [
        (None, 40, 4, 2),  # 10 of 40 in all: 8 for 2 rounds of 3 + baseline, 2 left
        (None, 60, 4, 7),
        (None, 12, 4, 0),  # the fixed rounds alone exceed a quarter: nothing more
        (5, 12, 4, 5),  # asked for: as asked
    ],
)
def test_validation_extra_by_default_fills_a_quarter_of_the_search(
    extra: int | None, deployed: int, candidates: int, expected: int
) -> None:
    assert (extra if extra is not None else default_extra(deployed, 2, candidates)) == expected


def test_the_validator_picks_its_candidates_and_its_budget(
    tmp_path: Path, space: SearchSpace, seeds: tuple[Seed, ...], objective: ObjectiveFile
) -> None:
    """Given no candidates, validation takes the search's pick, the fastest others on HIT and
    the baseline (tuner.decide.validation_candidates), and by default spends what a quarter of
    the search's deployments leaves after its fixed rounds."""
    from tuner.decide import validation_candidates

    profile = fake_profile()
    paths = _search(tmp_path, space, seeds, objective, profile, 5)
    v = Validator(paths=paths, space=space, objective=objective, profile=profile,
                  settings=ValidationSettings(top=2, rounds=1))  # fmt: skip
    want = validation_candidates(load_study(paths), paths.root, 2)
    assert [c.number for c in v.candidates] == [c.number for c in want]
    assert v.extra == default_extra(5, 1, len(want))


def test_the_default_extra_counts_deployments_as_the_target_does() -> None:
    """An interrupted trial deployed a server but is redone on resume: like the search's
    target, the quarter counts it not; a pointer to a duplicate deployed nothing."""
    from optuna.distributions import CategoricalDistribution

    from tuner.trial import deployments

    study = optuna.create_study()
    dist = {"x": CategoricalDistribution([1, 2])}
    for attrs, state in [
        ({"deployed": True}, TrialState.COMPLETE),
        ({"deployed": True, "reason": "oom"}, TrialState.FAIL),
        ({"deployed": True, "reason": "interrupted"}, TrialState.FAIL),
        ({"duplicate_of": 0}, TrialState.COMPLETE),
    ]:
        value = 1.0 if state == TrialState.COMPLETE else None
        study.add_trial(optuna.trial.create_trial(params={"x": 1}, distributions=dist,
                                                  value=value, state=state, user_attrs=attrs))  # fmt: skip
    assert deployments(study.trials) == 2
