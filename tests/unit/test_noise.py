"""The noise measurement (tuner.study.noise, tuner.decide.noise): fresh deployments of one
configuration per load timing, the timetable sized to the closed loop, the spread, the prior."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tuner.config import ObjectiveFile
from tuner.config.space import SearchSpace
from tuner.decide.noise import NoisePrior, spread
from tuner.deploy.fake import FakeDeployer
from tuner.schema import RequestRecord
from tuner.study import StudyPaths
from tuner.study.noise import NoiseRun, NoiseSettings
from tuner.testing import fake_profile


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


class _InterruptOnThird(FakeDeployer):
    starts = 0

    def wait_ready(self) -> float:
        type(self).starts += 1
        if type(self).starts == 3:
            raise KeyboardInterrupt
        return super().wait_ready()


def test_an_interrupted_noise_run_resumes(
    tmp_path: Path, space: SearchSpace, objective: ObjectiveFile
) -> None:
    """Ctrl-C on the third deployment; the same run again deploys what is missing only."""
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, space, objective, deployer_factory=_InterruptOnThird).run()
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
