"""Study storages: SQLite (WAL for new databases), Optuna's journal file, in-memory."""

from __future__ import annotations

import sqlite3
import threading
import warnings
from pathlib import Path

import optuna
import pytest

from tuner.errors import StudyError
from tuner.study.storage import MEMORY, StudyPaths, load_study, open_storage


def _add_trials(storage: object, name: str, n: int) -> None:
    study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True)
    for i in range(n):
        trial = study.ask()
        trial.suggest_int("x", 0, 9)
        trial.set_user_attr("i", i)
        study.tell(trial, float(i))


def _journal_mode(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])


def test_new_sqlite_study_is_wal_and_survives_reopening(tmp_path: Path) -> None:
    paths = StudyPaths.create("s", tmp_path)
    paths.root.mkdir(parents=True)
    storage = open_storage(paths.storage_url)
    assert isinstance(storage, optuna.storages.RDBStorage)
    _add_trials(storage, "s", 3)
    with storage.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    assert _journal_mode(paths.root / "study.db") == "wal"
    again = load_study(paths)
    assert [t.user_attrs["i"] for t in again.trials] == [0, 1, 2]


def test_existing_sqlite_database_keeps_its_journal_mode(tmp_path: Path) -> None:
    """A study database made elsewhere (e.g. one committed to git) is never rewritten to WAL."""
    db = tmp_path / "old.db"
    _add_trials(f"sqlite:///{db}", "old", 1)  # plain Optuna: rollback journal
    assert _journal_mode(db) == "delete"
    storage = open_storage(f"sqlite:///{db}")
    _add_trials(storage, "old", 2)
    assert _journal_mode(db) == "delete"
    assert len(optuna.load_study(study_name="old", storage=f"sqlite:///{db}").trials) == 3


def test_journal_file_round_trip(tmp_path: Path) -> None:
    (tmp_path / "j").mkdir()
    url = f"journal:///{tmp_path / 'j' / 'study.log'}"
    _add_trials(open_storage(url), "j", 2)
    study = load_study(StudyPaths.create("j", tmp_path, url))
    assert [t.value for t in study.trials] == [0.0, 1.0]


def test_a_truncated_journal_is_never_appended_to(tmp_path: Path) -> None:
    """A journal cut mid-record: reading says so (journal_problem) and sees the complete part;
    writing is refused with one line naming the cut, so the file stays readable."""
    from tuner.study.storage import journal_problem

    log = tmp_path / "j" / "study.log"
    log.parent.mkdir()
    url = f"journal:///{log}"
    _add_trials(open_storage(url), "j", 3)
    data = log.read_bytes()
    log.write_bytes(data[: len(data) - 10])  # the last record cut short
    problem = journal_problem(url)
    assert problem is not None
    assert "ends mid-record" in problem
    with pytest.raises(StudyError, match="ends mid-record"):
        open_storage(url)
    before = log.read_bytes()
    study = load_study(StudyPaths.create("j", tmp_path, url))  # reading: what is complete
    assert len(study.trials) == 3
    assert log.read_bytes() == before  # untouched
    keep = before.rfind(b"\n") + 1
    log.write_bytes(before[:keep])  # the advice in the message: back to the last record
    assert journal_problem(url) is None
    _add_trials(open_storage(url), "j", 1)  # appending works again
    assert len(load_study(StudyPaths.create("j", tmp_path, url)).trials) == 4


def test_memory_storage_cannot_be_reopened(tmp_path: Path) -> None:
    assert open_storage(MEMORY) is None
    with pytest.raises(StudyError, match="in-memory"):
        load_study(StudyPaths.create("m", tmp_path, MEMORY))


def test_a_corrupted_database_is_one_line_and_untouched(tmp_path: Path) -> None:
    """A study.db overwritten with garbage: reading and writing both refuse with one line
    naming the file; its bytes stay as they were."""
    paths = StudyPaths.create("c", tmp_path)
    paths.root.mkdir(parents=True)
    db = paths.root / "study.db"
    db.write_bytes(b"not a database, " * 1000)
    before = db.read_bytes()
    with pytest.raises(StudyError, match=r"cannot open study database .*not a database"):
        load_study(paths)
    with pytest.raises(StudyError, match="nothing was changed"):
        open_storage(paths.storage_url)
    assert db.read_bytes() == before


def _pop_all(url: str, workers: int) -> list[int]:
    """``workers`` threads, each with its own connection to the study at ``url`` as separate
    worker processes have, ask for queued trials at once until none is left."""
    start = threading.Barrier(workers)
    popped: list[int] = []

    def work() -> None:
        study = optuna.load_study(study_name="q", storage=open_storage(url))
        start.wait()
        while True:
            waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
            if not waiting:
                return
            trial = study.ask()
            if "seed" not in trial.user_attrs:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)  # a fresh one: not queued
                continue
            popped.append(trial.user_attrs["seed"])
            study.tell(trial, 1.0)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return popped


def test_a_queued_trial_goes_to_one_worker_only_on_sqlite(tmp_path: Path) -> None:
    """Workers share the default SQLite study (``--workers N``): a queued seed is popped by
    one of them only. SQLite has no SELECT ... FOR UPDATE, so Optuna's check that the trial is
    still WAITING raced with another worker's update and two workers ran one seed."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(study_name="q", storage=open_storage(url))
    for i in range(60):
        study.enqueue_trial({}, user_attrs={"seed": i})
    popped = _pop_all(url, 4)
    assert sorted(popped) == list(range(60))


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:///:memory:"])
def test_in_memory_sqlite_is_refused_in_one_line(url: str) -> None:
    """SQLAlchemy's in-memory SQLite would lose the study at exit (and its heartbeat thread
    would open another, empty one)."""
    with pytest.raises(StudyError, match="in-memory SQLite database is lost at exit"):
        open_storage(url)


def test_a_journal_in_a_missing_folder_is_refused(tmp_path: Path) -> None:
    """As for SQLite: a typo in the path creates no folder tree."""
    url = f"journal:///{tmp_path}/no/such/dir/j.log".replace("////", "///")
    with pytest.raises(StudyError, match="no folder"):
        open_storage(url)
    assert not (tmp_path / "no").exists()


def test_a_damaged_page_is_one_line_and_the_file_untouched(tmp_path: Path) -> None:
    """The header intact, a page in the middle overwritten: refused at open with SQLite's own
    verdict, the file byte for byte as it was."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = open_storage(url)
    assert storage is not None
    study = optuna.create_study(study_name="c", storage=storage)
    for i in range(40):
        trial = study.ask()
        trial.set_user_attr("pad", "x" * 500)
        study.tell(trial, float(i))
    storage.engine.dispose()
    with sqlite3.connect(tmp_path / "study.db") as conn:  # every page into the file
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray((tmp_path / "study.db").read_bytes())
    assert len(data) > 8192 + 4096
    data[8192 : 8192 + 4096] = b"\xab" * 4096
    (tmp_path / "study.db").write_bytes(bytes(data))
    with pytest.raises(StudyError) as exc:
        open_storage(url)
    assert "damaged" in str(exc.value)
    assert "\n" not in str(exc.value)
    assert (tmp_path / "study.db").read_bytes() == bytes(data)


def test_the_lock_follows_a_shared_journal_not_the_folder(tmp_path: Path) -> None:
    """Two studies folders over one journal file: the second run of the same study is refused
    in one line; another study on the same journal is not."""
    from tuner.study.storage import study_lock

    url = f"journal:///{tmp_path / 'shared.log'}"
    first = StudyPaths.create("s", tmp_path / "one", url)
    second = StudyPaths.create("s", tmp_path / "two", url)
    other = StudyPaths.create("t", tmp_path / "two", url)
    with study_lock(first):
        with pytest.raises(StudyError, match="is being run by pid"), study_lock(second):
            pass
        with study_lock(other):
            pass
    with study_lock(second):  # released with the first
        pass
