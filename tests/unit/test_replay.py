"""Replay deployer and surface export: determinism, fidelity to the recording, failures."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.conftest import ROOT
from tuner.config import ObjectiveFile, Profile, ReplayConfig, ServerArgs, load_seeds, load_space
from tuner.deploy import make_deployer
from tuner.errors import ConfigError, ServerExited
from tuner.report.surface import export_surface
from tuner.schema import SurfacePoint, TrialFolder, load_surface, point_key
from tuner.simulate import ReplayEngine
from tuner.study import RunSettings, StudyPaths, StudyRunner, load_study
from tuner.testing import FAST_WORKLOAD, fake_profile

H100 = ROOT / "benchmarks" / "data" / "h100_llama6b.json"
WORKLOAD = FAST_WORKLOAD.model_copy(update={"turns": 4, "conversations": 3})


def replay_profile(surface: Path, seed: int = 0) -> Profile:
    # time_scale 0: nothing waits (the H100's start-ups alone are minutes); values are counted
    return Profile(
        name="replay",
        server=ServerArgs(model="m", max_model_len=16384),
        deployer=ReplayConfig(surface=surface, seed=seed, time_scale=0.0),
    )


def test_same_seed_same_draws() -> None:
    """The samples a replayed deployment draws depend only on the seed and the deployment."""
    point = SurfacePoint({}, ["--x"], {}, "ok", miss_ms=[1.0, 2.0, 3.0], hit_ms=[4.0, 5.0, 6.0])

    def draws(seed: int) -> list[float]:
        engine = ReplayEngine(point, "m", f"{seed}:1")
        return [engine.admit(f"conv{i % 5} " + "w " * 100).prefill_s for i in range(40)]

    assert draws(1) == draws(1)
    assert draws(1) != draws(2)


def test_replayed_study_reproduces_recorded_values(
    tmp_path: Path, objective: ObjectiveFile
) -> None:
    """Three H100 configurations replayed through the whole trial loop: every request's
    server-side TTFT is one of the recorded samples of its kind, and the recorded hit rate,
    memory and start-up come back as they were."""
    space = load_space(ROOT / "search_spaces" / "seed_192.yaml")
    seeds = load_seeds(ROOT / "configs" / "strategic_12.yaml", space)[:3]
    StudyRunner(
        paths=StudyPaths.create("rp", tmp_path),
        space=space,
        seeds=seeds,
        objective=objective.model_copy(update={"workload": WORKLOAD}),
        profile=replay_profile(H100),
        settings=RunSettings(n_trials=3),
    ).run()
    recorded = load_surface(H100).by_key()
    study = load_study(StudyPaths.create("rp", tmp_path))
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 3
    for t in done:
        p = recorded[point_key(t.user_attrs["flags"])]
        a = t.user_attrs
        doc = TrialFolder(Path(a["trial_dir"])).read_measurements()
        for kind, recorded_ms in (("hit", p.hit_ms), ("miss", p.miss_ms)):
            served = [x.server_ttft_ms for x in doc.samples if x.kind == kind]
            assert served
            assert all(any(v == pytest.approx(r) for r in recorded_ms) for v in served)
        assert a["hit_rate_hit"] == pytest.approx(p.hit_rate, abs=0.02)
        assert a["vram_mib"] == p.vram_mib
        assert a["vram_source"] == "reported"
        assert a["startup_s"] == p.startup_s


def test_failures_and_unknown_points(tmp_path: Path) -> None:
    """A recorded failure comes back with its reason; a configuration never recorded is a
    crash that says so."""
    surface = tmp_path / "s.json"
    surface.write_text(
        json.dumps(
            {
                "name": "s",
                "points": [
                    {"params": {}, "flags": ["--a"], "env": {}, "status": "oom", "error": "OOM"}
                ],
            }
        )
    )
    dep = make_deployer(replay_profile(surface))
    for flags, reason, text in ((["--a"], "oom", "OOM"), (["--b"], "crash", "not in the recorded")):
        with dep:
            dep.start(flags, tmp_path / reason)
            with pytest.raises(ServerExited) as exc:
                dep.wait_ready()
        assert exc.value.reason == reason
        assert text in exc.value.log_tail


def test_bad_surface_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"points": [{"nope": 1}]}')
    with pytest.raises(ConfigError, match="bad.json"):
        load_surface(tmp_path / "bad.json")


def test_export_round_trip(tmp_path: Path, objective: ObjectiveFile) -> None:
    """Exporting a fake-server study keeps every deployment once, with its raw samples and
    failure reasons; duplicates and never-deployed points are left out."""
    space = load_space(ROOT / "search_spaces" / "seed_192.yaml")
    StudyRunner(
        paths=StudyPaths.create("ex", tmp_path),
        space=space,
        seeds=load_seeds(ROOT / "configs" / "strategic_12.yaml", space),
        objective=objective,
        profile=fake_profile(oom_when=[{"--max-num-seqs": "128"}], crash_retries=0),
        settings=RunSettings(n_trials=12, sampler_seed=2),
    ).run()
    paths = StudyPaths.create("ex", tmp_path)
    study = load_study(paths)
    surface = export_surface(study, paths.root)
    deployed = [t for t in study.trials if t.user_attrs.get("deployed")]
    assert len(surface.points) == len(deployed) == 12
    by_key = surface.by_key()
    for t in deployed:
        p = by_key[point_key(t.user_attrs["flags"])]
        if t.state == TrialState.COMPLETE:
            assert p.status == "ok"
            doc = json.loads((Path(t.user_attrs["trial_dir"]) / "measurements.json").read_text())
            assert p.hit_ms == [s["ttft_ms"] for s in doc["samples"] if s["kind"] == "hit"]
            assert statistics.median(p.hit_ms) == pytest.approx(t.user_attrs["ttft_hit_ms"])
        else:
            assert p.status == t.user_attrs["reason"] == "oom"


def test_hypervolume_hand_computed() -> None:
    """One point at the origin: the whole 1.1^3 box. Two points (0.5,0,0) and (0,0.5,0):
    0.6*1.1*1.1 + 1.1*0.6*1.1 - 0.6*0.6*1.1 = 1.056. Dominated points add nothing."""
    from tuner.front import normalised_hypervolume

    lo, hi = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    assert normalised_hypervolume([[0, 0, 0]], lo, hi) == pytest.approx(1.331)
    two = [[0.5, 0, 0], [0, 0.5, 0]]
    assert normalised_hypervolume(two, lo, hi) == pytest.approx(1.056)
    assert normalised_hypervolume([*two, [0.6, 0.6, 0.5]], lo, hi) == pytest.approx(1.056)
    # normalisation: the same front in other units gives the same value
    assert normalised_hypervolume([[50, 0, 0], [0, 5, 0]], lo, [100, 10, 1]) == pytest.approx(1.056)
    assert normalised_hypervolume([], lo, hi) == 0.0


def test_a_surface_of_another_space_is_refused_before_any_trial(
    tmp_path: Path, objective: ObjectiveFile
) -> None:
    """The CPU surface replayed over the mission's space: no point of one is in the other, so
    the study stops with one line before any trial instead of recording 'crash' for all."""
    space = load_space(ROOT / "search_spaces" / "seed_192.yaml")
    runner = StudyRunner(
        paths=StudyPaths.create("other", tmp_path), space=space, seeds=(),
        objective=objective, settings=RunSettings(n_trials=2),
        profile=replay_profile(ROOT / "benchmarks" / "data" / "cpu_48.json"),
    )  # fmt: skip
    with pytest.raises(ConfigError, match="holds no configuration of space 'seed_192'"):
        runner.run()
    assert not (tmp_path / "other" / "trials").exists()
