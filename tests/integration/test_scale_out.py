"""Several workers on one study, on a real PostgreSQL server and on the journal file.

Workers are real ``tuner`` processes; the servers they deploy are the simulated (``fake``) and
replayed ones, so that each test runs in seconds. What is checked is what Optuna's distributed
mode leaves to us: the target reached (with at most W-1 trials in flight past it), the seeds
once, no trial shown failed that is not the configuration's failure, a killed worker's point
retried by another one, and the same points as one worker alone.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from tuner.errors import StudyError
from tuner.study import StudyPaths
from tuner.study.storage import open_storage
from tuner.testing import PostgresUnavailable, postgres_server
from tuner.trial import StoredTrial

ROOT = Path(__file__).resolve().parents[2]
TUNER = [sys.executable, "-m", "tuner.cli"]
SURFACE = ROOT / "benchmarks/data/synthetic_mission.json"

FAKE = """\
name: fake
server: {model: fake-model, max_model_len: 4096}
deployer: {kind: fake, startup_s: %s}
"""
REPLAY = f"""\
name: replay
server: {{model: fake-model, max_model_len: 4096}}
deployer: {{kind: replay, surface: {SURFACE}, time_scale: 0}}
"""


@pytest.fixture(scope="module")
def pg() -> Iterator[str]:
    """A real PostgreSQL server on 127.0.0.1 for this module (skip, or fail in CI, without)."""
    try:
        with postgres_server() as url:
            yield url
    except PostgresUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests (apt-get install postgresql): {exc}")
        pytest.skip(str(exc))


@pytest.fixture(params=["postgres", "journal"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "journal":
        return f"journal:///{tmp_path}/study.journal"
    pg_url = str(request.getfixturevalue("pg"))
    # One study name per test on the shared server.
    return pg_url


def _study_name(tmp_path: Path) -> str:
    return f"s{abs(hash(str(tmp_path))) % 10**8}"


def _tuner(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TUNER, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip


def _trials(name: str, studies: Path, storage: str) -> list[FrozenTrial]:
    url = StudyPaths.create(name, studies, storage).storage_url
    st = open_storage(url, writing=False)
    try:
        return optuna.load_study(study_name=name, storage=st).get_trials()
    finally:
        if isinstance(st, optuna.storages.RDBStorage):
            st.engine.dispose()  # the pool's connections, closed now (not by the collector)


def _deployed(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("deployed")]


def _key(t: FrozenTrial) -> str:
    return repr(sorted(t.params.items()))


def test_three_workers_reach_the_target_and_no_false_failure(tmp_path: Path, storage: str) -> None:
    """3 workers, 14 deployments: 14 to 16 (up to 2 in flight finish past the target), each of
    the 12 seeds on a measured trial (two share a point: one trial, both names), no failed
    trial that is not a failure, and all three workers deployed."""
    (tmp_path / "fake.yaml").write_text(FAKE % 0.5)
    name, studies = _study_name(tmp_path), tmp_path / "studies"
    r = _tuner("optimize", "--trials", "14", "--study", name, "--workers", "3",
               "--storage", storage, "--profile", str(tmp_path / "fake.yaml"),
               "--studies-dir", str(studies), "--no-validate")  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "12 seeds queued (11 trials); 3 workers" in r.stdout
    trials = _trials(name, studies, storage)
    deployed = _deployed(trials)
    assert 14 <= len(deployed) <= 16
    # a point two workers drew in the same instant is a replicate, never a failure
    assert max(Counter(_key(t) for t in deployed).values()) <= 2
    assert all(StoredTrial(t).is_failure for t in trials if t.state == TrialState.FAIL)
    # every deployment left its folder, and nothing else did
    folders = [p for p in (studies / name / "trials").iterdir() if (p / "command.json").exists()]
    assert len(folders) == len(deployed)
    names = Counter(n for t in deployed for n in StoredTrial(t).seed_names)
    assert len(names) == 12
    assert set(names.values()) == {1}
    assert len({t.user_attrs["worker"] for t in deployed}) == 3


def _wait_for(pred: object, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


@pytest.mark.parametrize("hosts", [1, 2])
def test_kill_9_of_a_worker_its_point_is_retried_by_another(
    tmp_path: Path, storage: str, hosts: int
) -> None:
    """kill -9 of a worker mid-trial. On one host the others see its lock free at once; from
    another host (its own study folder) only the heartbeats tell, after the grace period. Its
    point is deployed again by the surviving worker, and the study reaches its target. (No
    seeds: a retry is queued behind the seeds still waiting, and the target would be reached
    before it.)"""
    if hosts == 2 and storage.startswith("journal"):
        pytest.skip("the journal file is for one host: it has no heartbeats")
    (tmp_path / "fake.yaml").write_text(FAKE % 2.0)
    name, studies = _study_name(tmp_path), tmp_path / "a"
    common = ["--storage", storage, "--profile", str(tmp_path / "fake.yaml")]
    first = _tuner("optimize", "--trials", "1", "--study", name, "--studies-dir", str(studies),
                   "--no-validate", "--no-seeds", *common)  # fmt: skip
    assert first.returncode == 0, first.stdout + first.stderr

    def worker(folder: Path, err: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen([*TUNER, "worker", name, "--trials", "4", "--studies-dir",
                                 str(folder), "--heartbeat", "1", "--grace", "4", *common],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip

    victim = worker(studies if hosts == 1 else tmp_path / "b", subprocess.DEVNULL)

    def victims_trial() -> FrozenTrial | None:
        for t in _trials(name, studies, storage):
            if t.state == TrialState.RUNNING and str(victim.pid) in t.user_attrs.get("worker", ""):
                return t if t.user_attrs.get("deployed") else None
        return None

    _wait_for(lambda: victims_trial() is not None)
    lost = victims_trial()
    assert lost is not None
    survivor = worker(studies, subprocess.PIPE)
    try:
        time.sleep(0.5)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        _, err = survivor.communicate(timeout=240)
        assert survivor.returncode == 0, err.decode()
    finally:
        for p in (victim, survivor):
            if p.poll() is None:
                p.kill()
    trials = _trials(name, studies, storage)
    was = trials[lost.number]
    assert was.state == TrialState.FAIL
    # one host: failed at once as interrupted; another host: failed by Optuna's heartbeat check
    assert was.user_attrs.get("reason") == ("interrupted" if hosts == 1 else None)
    retries = [t for t in trials if t.user_attrs.get("retry_of") == lost.number]
    assert len(retries) == 1
    assert retries[0].params == lost.params
    assert retries[0].state == TrialState.COMPLETE
    assert retries[0].user_attrs["worker"] != lost.user_attrs["worker"]
    assert 4 <= len(_deployed(trials)) <= 5  # the victim's trial may have been in flight


def test_the_same_points_as_one_worker(tmp_path: Path, storage: str) -> None:
    """Seeds only (the 11 distinct points of the 12 seeds), replayed without waiting: 3 workers
    deploy the same points as 1, and `tuner report` tabulates the same configurations."""
    (tmp_path / "replay.yaml").write_text(REPLAY)
    fronts = []
    for n in (1, 3):
        name = f"{_study_name(tmp_path)}w{n}"
        studies = tmp_path / f"studies{n}"
        r = _tuner("optimize", "--trials", "11", "--study", name, "--workers", str(n),
                   "--storage", storage, "--profile", str(tmp_path / "replay.yaml"),
                   "--studies-dir", str(studies), "--no-validate")  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        trials = _trials(name, studies, storage)
        # the seeds' points: with 3 workers, up to 2 sampler trials in flight finish past the
        # target of 11 (every seed is popped before any of them)
        points = {
            _key(t) for t in trials if t.user_attrs.get("deployed") and StoredTrial(t).seed_name
        }
        rep = _tuner("report", name, "--storage", storage, "--studies-dir", str(studies))
        assert rep.returncode == 0, rep.stderr
        # the report's table names the same configurations (latencies are measured anew)
        with (studies / name / "trials.csv").open() as f:
            names = {row["name"] for row in csv.DictReader(f)
                     if row["state"] == "complete" and not row["name"].startswith("trial_")}  # fmt: skip
        fronts.append((points, names))
    assert len(fronts[0][0]) == 11
    assert fronts[0] == fronts[1]


def test_compose_refuses_several_workers(tmp_path: Path) -> None:
    compose = tmp_path / "compose.yaml"
    compose.write_text("services:\n  vllm:\n    image: x\n")
    (tmp_path / "p.yaml").write_text(
        f"name: c\nserver: {{model: m}}\ndeployer: {{kind: compose, file: {compose}, "
        "service: vllm}\n"
    )
    r = _tuner("optimize", "--workers", "2", "--profile", str(tmp_path / "p.yaml"),
               "--studies-dir", str(tmp_path / "s"))  # fmt: skip
    assert r.returncode == 2
    assert "tunes one server" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_storage_url_password_never_shown(pg: str) -> None:
    """A PostgreSQL study that cannot be opened is one line, its password redacted."""
    bad = pg.replace("postgres@", "postgres:hunter2@").rsplit("/", 1)[0] + "/nodb"
    with pytest.raises(StudyError) as info:
        open_storage(bad)
    assert "hunter2" not in str(info.value)
    assert "***" in str(info.value)
    assert 'database "nodb" does not exist' in str(info.value)


def test_report_from_another_host_fetches_the_trials_files(tmp_path: Path, pg: str) -> None:
    """Workers on two "hosts" (their own study folders) with one PostgreSQL: the trials'
    files go to the study's artifact store, so a report from a third folder has them all."""
    (tmp_path / "fake.yaml").write_text(FAKE % 0.2)
    name = _study_name(tmp_path)
    common = ["--storage", pg, "--profile", str(tmp_path / "fake.yaml")]
    r = _tuner("optimize", "--trials", "2", "--study", name, "--studies-dir",
               str(tmp_path / "a"), "--no-validate", *common)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    w = _tuner("worker", name, "--trials", "4", "--studies-dir", str(tmp_path / "b"), *common)
    assert w.returncode == 0, w.stdout + w.stderr
    rep = _tuner("report", name, "--storage", pg, "--studies-dir", str(tmp_path / "c"))
    assert rep.returncode == 0, rep.stderr
    assert f"from {tmp_path / 'a' / name / 'artifacts'}" in rep.stdout
    for t in _deployed(_trials(name, tmp_path / "c", pg)):
        folder = tmp_path / "c" / name / "trials" / f"{t.number:04d}"
        assert json.loads((folder / "measurements.json").read_text())["trial"] == t.number
        assert (folder / "server.log").exists()
    assert "recommended:" in rep.stdout
