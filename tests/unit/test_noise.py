"""The noise measurement (tuner.study.noise, tuner.decide.noise): fresh deployments of one
configuration per load timing, the timetable sized to the closed loop, the spread, the prior."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest

from tuner.config import ObjectiveFile
from tuner.config.space import SearchSpace
from tuner.decide.noise import NoisePrior, spread
from tuner.schema import RequestRecord
from tuner.study import StudyPaths
from tuner.study.noise import NoiseRun, NoiseSettings
from tuner.testing import fake_profile, interrupting


def _params(space: SearchSpace) -> dict[str, object]:
    return dict(next(iter(space.points())))


def _run(tmp_path: Path, space: SearchSpace, objective: ObjectiveFile, **kw: object) -> NoiseRun:
    return NoiseRun(paths=StudyPaths.create("n", tmp_path), space=space, objective=objective,
                    profile=fake_profile(), params=_params(space),  # type: ignore[arg-type]
                    settings=NoiseSettings(deployments=2), **kw)  # type: ignore[arg-type]  # fmt: skip


def test_both_timings_interleaved_and_the_timetable_sized_from_the_closed_loop(
    tmp_path: Path, space: SearchSpace, objective: ObjectiveFile
) -> None:
    """2 deployments per timing, closed first: the timetable's gaps come from the first closed
    deployment, every timetable request has its lateness, and each metric has a spread per
    timing over its 2 deployments."""
    result = _run(tmp_path, space, objective).run()
    assert (result.done, result.planned) == (4, 4)
    assert result.gaps is not None
    assert all(g > 0 for g in result.gaps)
    by = {(s.timing, s.metric): s for s in result.spreads}
    assert set(by) >= {("closed", "ttft_hit_ms"), ("timetable", "ttft_hit_ms")}
    assert all(len(s.medians) == 2 for s in result.spreads)
    assert by[("closed", "ttft_hit_ms")].late_ms is None
    assert by[("timetable", "ttft_hit_ms")].late_ms is not None
    assert math.isfinite(by[("closed", "ttft_hit_ms")].cv)


def test_an_interrupted_noise_run_resumes(
    tmp_path: Path, space: SearchSpace, objective: ObjectiveFile
) -> None:
    """Ctrl-C on the third deployment; the same run again deploys what is missing only."""
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, space, objective, deployer_factory=interrupting(3)).run()
    again = _run(tmp_path, space, objective).run()
    assert (again.done, again.planned) == (4, 4)


def _records(ms: list[float]) -> list[RequestRecord]:
    return [RequestRecord(i, 1, "hit", x, x + 5, 100, 8, 0.0, 0.0, 0.0, None, started_s=i)
            for i, x in enumerate(ms)]  # type: ignore[arg-type]  # fmt: skip


def test_spread_between_and_within() -> None:
    """Two deployments whose medians are 100 and 110: CV 6.7 %, max/min 1.10; the same
    request's CV across them is read pairwise; one deployment alone has no CV."""
    a, b = _records([98, 100, 102] * 5), _records([108, 110, 112] * 5)
    s = spread([a, b], "ttft_hit_ms", "closed")
    assert s.medians == (100.0, 110.0)
    assert s.cv == pytest.approx(0.0673, abs=1e-3)
    assert s.max_over_min == pytest.approx(1.1)
    assert s.request_cv[0] > 0
    assert math.isnan(spread([a], "ttft_hit_ms", "closed").cv)


def test_the_prior_is_kept_per_host_and_deployer(tmp_path: Path) -> None:
    """A prior saved for one deployer kind is found again for it, not for another."""
    s = spread([_records([100] * 9), _records([104] * 9)], "ttft_hit_ms", "timetable")
    prior = NoisePrior.measured(s, "docker", "tuner noise x")
    prior.save(tmp_path)
    assert NoisePrior.load(tmp_path, "docker") == prior
    assert NoisePrior.load(tmp_path, "local") is None
    assert "tuner noise x" in prior.words()


def test_the_two_level_interval_covers_at_its_level() -> None:
    """Constructed configurations with the same true median, each deployed once or twice at a
    level drawn with a known 6 % between deployments: the two-level interval of their
    difference covers 0 at about its 95 %; the within-only bootstrap, which treats one
    deployment as the truth, covers far less."""
    import numpy as np

    from tuner.metrics import bootstrap_diff, bootstrap_diff_two_level

    rng = np.random.default_rng(0)
    cv, draws = 0.06, 200

    def config(n: int) -> list[list[float]]:
        return [list(100 * rng.normal(1, cv) * rng.lognormal(0, 0.1, 15)) for _ in range(n)]

    for n in (1, 2):
        two = one = 0
        for i in range(draws):
            a, b = config(n), config(n)
            lo, hi = bootstrap_diff_two_level("median", a, b, cv=cv, seed=i, resamples=400)
            two += lo <= 0 <= hi
            lo, hi = bootstrap_diff("median", sum(a, []), sum(b, []), seed=i, resamples=400)
            one += lo <= 0 <= hi
        assert 0.90 <= two / draws <= 0.995, (n, two)
        assert one / draws < 0.8, (n, one)


KNOB = """\
name: knob
dimensions:
  max_num_seqs: {values: [8, 16, 32, 64], flag: --max-num-seqs}
"""


def test_a_knob_that_does_nothing_is_never_beyond_the_noise(tmp_path: Path) -> None:
    """A replayed server whose four values of a knob serve the same recorded latencies, each
    deployment scaled by a factor drawn with 10 % between deployments, one deployment each:
    the study's groups call no pair beyond the noise (a within-only interval does), and the
    noise model says it came from this machine's prior."""
    import json
    import random

    from tests.conftest import ROOT
    from tuner.config import ReplayConfig, ServerArgs, load_objective, load_space
    from tuner.config.profile import Profile
    from tuner.decide import best_group, load_observations, study_noise
    from tuner.front import measured_trials
    from tuner.metrics import bootstrap_diff
    from tuner.study import RunSettings, StudyRunner, load_study
    from tuner.testing import FAST_WORKLOAD

    (tmp_path / "knob.yaml").write_text(KNOB)
    space = load_space(tmp_path / "knob.yaml")
    rng = random.Random(1)
    hit = [rng.gauss(20.0, 2.0) for _ in range(60)]
    miss = [rng.gauss(30.0, 3.0) for _ in range(60)]
    points = [{"params": p, "flags": space.to_flags(p), "env": {}, "status": "ok",
               "miss_ms": miss, "hit_ms": hit, "hit_rate": 0.9, "vram_mib": 1000.0}
              for p in space.points()]  # fmt: skip
    (tmp_path / "surface.json").write_text(json.dumps({"name": "knob", "points": points}))
    profile = Profile(name="knob", server=ServerArgs(model="m"),
                      # latencies waited out 4 x (HIT about 80 ms): the scheduling jitter of
                      # a loaded machine (another test's vLLM on the other core) stays a small
                      # share of them, as it is of a real server's
                      deployer=ReplayConfig(surface=tmp_path / "surface.json",
                                            deployment_noise=0.10, seed=3, time_scale=4.0))  # fmt: skip
    objective = load_objective(ROOT / "objectives" / "agent_multiturn.yaml")
    workload = FAST_WORKLOAD.model_copy(update={"conversations": 6, "turns": 4})
    objective = objective.model_copy(
        update={"workload": workload, "criteria": None,
                "objectives": [o.model_copy(update={"precision": None})
                               for o in objective.objectives]})  # fmt: skip
    studies = tmp_path / "studies"
    NoisePrior(0.10, 8, "closed", socket.gethostname(), "replay", "2026-12-03",
               "tuner noise (test)").save(studies)  # fmt: skip
    paths = StudyPaths.create("k", studies)
    StudyRunner(paths=paths, space=space, seeds=(), objective=objective, profile=profile,
                settings=RunSettings(n_trials=4, sampler_seed=0)).run()  # fmt: skip
    study = load_study(paths)
    trials = measured_trials(study)
    assert len(trials) == 4
    noise = study_noise(study)
    assert noise.cv == pytest.approx(0.10)
    assert "tuner noise (test)" in noise.words()
    obs = load_observations(study, paths.root, trials)
    group = best_group(study, trials, "ttft_hit_ms", obs)
    assert all(lo <= 0 <= hi for lo, hi in group.diffs.values())  # nothing beyond the noise
    # the within-only interval calls some of these identical configurations apart
    spec = "median"
    samples = {t.number: obs[t.number].series["ttft_hit_ms"] for t in trials}
    best = group.best.number
    single = [bootstrap_diff(spec, samples[n], samples[best]) for n in samples if n != best]
    assert any(not (lo <= 0 <= hi) for lo, hi in single)


def test_a_study_keeps_the_prior_and_its_validation_updates_it(
    tmp_path: Path, space: SearchSpace, seeds: tuple, objective: ObjectiveFile
) -> None:
    """A new study stores the machine's prior for its deployer kind; its validation rounds
    (fresh deployments of each candidate) give its own estimate, which the report's model
    pools with the prior and which is kept as the next study's prior (a prior of more
    deployments is not replaced)."""
    from tuner.decide import load_validation, study_noise
    from tuner.study import RunSettings, StudyRunner, ValidationSettings, Validator, load_study
    from tuner.trial import StudyAttr

    studies = tmp_path / "studies"
    NoisePrior(0.2, 2, "closed", socket.gethostname(), "fake", "-", "tuner noise t").save(studies)
    paths = StudyPaths.create("p", studies)
    StudyRunner(paths=paths, space=space, seeds=tuple(seeds[:4]), objective=objective,
                profile=fake_profile(), settings=RunSettings(n_trials=4, sampler_seed=0)).run()  # fmt: skip
    study = load_study(paths)
    assert study.user_attrs[StudyAttr.NOISE_PRIOR]["cv"] == 0.2
    assert study_noise(study).cv == pytest.approx(0.2)
    Validator(paths=paths, space=space, objective=objective, profile=fake_profile(),
              settings=ValidationSettings(top=2, rounds=2, extra=0)).run()  # fmt: skip
    model = study_noise(load_study(paths), load_validation(load_study(paths)))
    assert model.own is not None
    assert model.own_dof >= 2
    assert "pooled with this study's" in model.source
    kept = NoisePrior.load(studies, "fake")
    assert kept is not None
    assert kept.source == "validation of study p"
    assert kept.cv == pytest.approx(model.own)
