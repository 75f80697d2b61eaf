"""Workers on one study: liveness by lock, lost trials, GPU slots, what storage says of a trial."""

from __future__ import annotations

import multiprocessing
import os
import signal
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tuner.cli._common import parse_gpus
from tuner.config.profile import DockerConfig, LocalConfig, Profile, ServerArgs
from tuner.deploy import confine, plan_slots
from tuner.errors import ConfigError
from tuner.study.workers import alive, lost_trials, retry_lost, worker_lease
from tuner.testing import fake_profile
from tuner.trial import StoredTrial


def _profile(deployer: DockerConfig | LocalConfig, tp: int = 1) -> Profile:
    return Profile(
        name="p",
        server=ServerArgs(model="m", tensor_parallel_size=tp),
        deployer=deployer,
    )


def _hold_lease(root: str, ready: multiprocessing.synchronize.Event, path: str) -> None:
    with worker_lease(Path(root)) as run_id:
        Path(path).write_text(run_id)
        ready.set()
        signal.pause()


def test_a_killed_workers_lock_is_free_at_once(tmp_path: Path) -> None:
    """Alive while the process runs; dead right after kill -9 (the kernel drops the flock);
    unknown for a worker that never ran on this host."""
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    out = tmp_path / "id"
    proc = ctx.Process(target=_hold_lease, args=(str(tmp_path), ready, str(out)))
    proc.start()
    assert ready.wait(10)
    run_id = out.read_text()
    assert str(proc.pid) in run_id
    assert alive(tmp_path, run_id) is True
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    assert alive(tmp_path, run_id) is False
    assert alive(tmp_path, run_id) is None  # the dead worker's file is gone
    assert alive(tmp_path, "elsewhere-1-abc") is None


def test_a_clean_exit_removes_the_lock(tmp_path: Path) -> None:
    with worker_lease(tmp_path) as run_id:
        assert alive(tmp_path, run_id) is True
    assert alive(tmp_path, run_id) is None


def _study() -> optuna.Study:
    return optuna.create_study(directions=["minimize"])


def _running(study: optuna.Study, worker: str | None, **params: int) -> optuna.Trial:
    """A RUNNING trial at ``params`` (each of the choices 1..5), of ``worker``."""
    study.enqueue_trial(params)
    t = study.ask()
    if worker is not None:
        t.set_user_attr("worker", worker)
    for k in params:
        t.suggest_categorical(k, [1, 2, 3, 4, 5])
    return t


def test_lost_trials_by_lock_and_by_lock_holder(tmp_path: Path) -> None:
    """A dead local worker's trial is lost; a live one's is not; another host's only under
    the study's lock without heartbeats; a trial of no worker only under the study's lock."""
    study = _study()
    with worker_lease(tmp_path) as live:
        dead_dir = tmp_path / ".workers"
        (dead_dir / "dead-1-x.lock").write_text("")  # a lock file nobody holds
        t_live = _running(study, live, a=1)
        t_dead = _running(study, "dead-1-x", a=2)
        t_remote = _running(study, "remote-1-y", a=3)
        t_none = _running(study, None, a=4)
        shared = {t.number for t in lost_trials(study, tmp_path, exclusive=False)}
        assert shared == {t_dead.number}
        (dead_dir / "dead-1-x.lock").write_text("")
        mine = {t.number for t in lost_trials(study, tmp_path, exclusive=True)}
        assert mine == {t_dead.number, t_remote.number, t_none.number}
        assert t_live.number not in mine


def test_retry_keeps_the_point_not_the_attempt() -> None:
    study = _study()
    t = _running(study, "w", a=1, b=2)
    t.set_user_attr("seed_name", "s1")
    t.set_user_attr("deployed", True)
    study.tell(t, state=TrialState.FAIL)
    retry_lost(study, study.trials[0])
    nxt = study.ask()
    assert nxt.user_attrs == {"seed_name": "s1", "retry_of": 0}
    assert nxt.suggest_categorical("a", [1, 2, 3, 4, 5]) == 1


def test_a_heartbeat_failed_trial_is_not_evaluated() -> None:
    """Optuna fails a stale trial without our reason: its point was never measured."""
    study = _study()
    t = _running(study, "w", a=1)
    study.tell(t, state=TrialState.FAIL)
    assert not StoredTrial(study.trials[0]).evaluated
    assert not StoredTrial(study.trials[0]).is_failure  # an interruption, not a failure
    t2 = _running(study, "w", a=2)
    t2.set_user_attr("reason", "oom")
    study.tell(t2, state=TrialState.FAIL)
    assert StoredTrial(study.trials[1]).evaluated


def test_a_queued_trial_lost_before_its_point_was_drawn_is_retried() -> None:
    """A worker died between popping a queued seed and drawing its parameters: the retry
    takes the point from the trial's fixed parameters."""
    study = _study()
    study.enqueue_trial({"a": 4}, user_attrs={"seed_name": "s4"})
    lost = study.ask()  # popped, nothing drawn
    study.tell(lost, state=TrialState.FAIL)
    retry_lost(study, study.trials[0])
    nxt = study.ask()
    assert nxt.user_attrs["seed_name"] == "s4"
    assert nxt.suggest_categorical("a", [1, 2, 3, 4, 5]) == 4


class TestSlots:
    def test_gpus_split_by_tensor_parallel_size(self) -> None:
        prof = _profile(DockerConfig(), tp=2)
        slots = plan_slots(2, ["0", "1", "2", "3"], prof)
        assert [s.gpus for s in slots] == [("0", "1"), ("2", "3")]
        cfg = confine(prof, slots[1]).deployer
        assert isinstance(cfg, DockerConfig)
        assert cfg.gpus == ["2", "3"]
        with pytest.raises(ConfigError, match="need 6 GPUs"):
            plan_slots(3, ["0", "1", "2", "3"], prof)

    def test_local_gets_cuda_visible_devices_and_its_own_port(self) -> None:
        prof = _profile(LocalConfig(port=8100, env={"A": "1"}))
        slot = plan_slots(2, ["4", "5"], prof)[1]
        cfg = confine(prof, slot).deployer
        assert isinstance(cfg, LocalConfig)
        assert cfg.env == {"A": "1", "CUDA_VISIBLE_DEVICES": "5"}
        assert cfg.port == 8101
        assert isinstance(prof.deployer, LocalConfig)
        assert prof.deployer.port == 8100  # the original untouched

    def test_no_gpus_no_change(self) -> None:
        prof = fake_profile()
        slots = plan_slots(3, None, prof)
        assert [s.gpus for s in slots] == [None, None, None]
        assert confine(prof, slots[2]) is prof

    def test_gpu_ids_are_checked(self) -> None:
        assert parse_gpus("0, 1") == ["0", "1"]
        assert parse_gpus(None) is None
        for bad in ("0,,1", "1,1"):
            with pytest.raises(ConfigError, match="distinct ids"):
                parse_gpus(bad)


def test_heartbeat_warning_is_only_ours_to_silence(tmp_path: Path) -> None:
    """The runner silences Optuna's 'heartbeat outside optimize' warning around its own ask;
    the warning still exists (a new Optuna that drops it would make the filter dead code)."""
    from tuner.study.storage import Heartbeat, open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 'h.db'}", heartbeat=Heartbeat(1, 2))
    study = optuna.create_study(storage=storage)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study.ask()
    assert any("Heartbeat of storage" in str(w.message) for w in caught)


@pytest.mark.docker  # without a study, `tuner cleanup` removes every labelled container
def test_cleanup_refuses_while_a_worker_runs(tmp_path: Path) -> None:
    """`tuner cleanup` stops what dead runs left; a live worker's server is not its to stop."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "tuner.cli", "cleanup", "--studies-dir", str(tmp_path)]
    with worker_lease(tmp_path / "s1") as run_id:
        r = subprocess.run(cmd, capture_output=True, text=True, check=False)
        assert r.returncode == 2
        assert f"workers are running: {run_id} (s1)" in r.stderr
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
