"""Where a study lives: ``studies/NAME/`` with its SQLite database and one folder per trial."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import sqlite3
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy

from tuner.errors import StudyError
from tuner.schema import TrialFolder

__all__ = [
    "MEMORY",
    "Heartbeat",
    "StudyPaths",
    "journal_problem",
    "load_study",
    "open_storage",
    "redact",
    "study_lock",
]

MEMORY = "memory://"  # Optuna's in-memory storage (benchmarks, dry runs)
JOURNAL = "journal:///"
SQLITE = "sqlite:///"  # journal:///path/to/file.log: Optuna's append-only journal file


def journal_problem(url: str) -> str | None:
    """Why the journal file behind ``url`` cannot take another record, or None.

    Optuna's reader skips a last line without its newline (a file cut short, a full disk), so
    a study reads as if the last operation never happened; the next append would glue a new
    record to that fragment and make the whole file unreadable.
    """
    if not url.startswith(JOURNAL):
        return None
    path = Path("/" + url.removeprefix(JOURNAL))
    if not path.exists() or path.stat().st_size == 0:
        return None
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return None
        data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    return (
        f"journal file {path} ends mid-record (byte {len(data)}; the last complete record ends "
        f"at byte {keep}): it was cut short, e.g. by a full disk. Appending would make it "
        f"unreadable; keep a copy, then `truncate -s {keep} {path}` to continue from the last "
        "complete record"
    )


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Optuna's heartbeats on an RDB storage: a worker's RUNNING trial beats every
    ``interval_s``; one silent for ``grace_s`` is failed and its point retried."""

    interval_s: int = 10
    grace_s: int = 60

    def kwargs(self) -> dict[str, Any]:
        """The RDB storage's heartbeat arguments: a trial silent for the grace period is failed
        and its point queued again."""
        from tuner.study.workers import retry_lost

        return {
            "heartbeat_interval": self.interval_s,
            "grace_period": self.grace_s,
            "heartbeat_stale_trial_callback": retry_lost,
        }


def open_storage(
    url: str, *, writing: bool = True, heartbeat: Heartbeat | None = None
) -> str | optuna.storages.BaseStorage | None:
    """What ``optuna.create_study(storage=...)`` takes for ``url``: other RDB URLs pass through,
    ``sqlite:///PATH`` gets WAL (below), ``journal:///PATH`` opens a JournalStorage on a file
    (refused for ``writing`` when it ends mid-record), ``memory://`` is in-memory (None).
    ``heartbeat`` turns Optuna's heartbeats on for RDB storages (the journal has none: on one
    host the workers' locks tell a dead worker, ``tuner.study.workers``)."""
    if url == MEMORY:
        return None
    if _in_memory_sqlite(url):
        # SQLAlchemy reads this as an in-memory database: gone at exit, and its heartbeat
        # thread would see another, empty one.
        raise StudyError(
            f"--storage {url}: an in-memory SQLite database is lost at exit; give a file "
            "(sqlite:///PATH) or leave --storage out"
        )
    extra = heartbeat.kwargs() if heartbeat is not None else {}
    if url.startswith(SQLITE):
        return _sqlite_storage(url, extra, writing=writing)
    if url.startswith(JOURNAL):
        from optuna.storages.journal import JournalFileBackend

        path = Path("/" + url.removeprefix(JOURNAL))
        problem = journal_problem(url) if writing else None
        if problem:
            raise StudyError(problem)
        if not path.parent.is_dir():  # as for SQLite: a typo must not create a folder tree
            raise StudyError(f"--storage {url}: no folder {path.parent}")
        try:
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        except ValueError as exc:  # a corrupt record in the middle
            raise StudyError(f"journal file {path} is unreadable: {_first_line(exc)}") from exc
    try:
        return _rdb(url, extra)
    except (sqlalchemy.exc.SQLAlchemyError, ValueError, ImportError) as exc:
        raise StudyError(f"cannot open storage {redact(url)}: {_first_line(exc)}") from exc


def _in_memory_sqlite(url: str) -> bool:
    """``sqlite://``, ``sqlite:///`` or ``sqlite:///:memory:``: no file behind it."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return False
    return parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")


def redact(url: str) -> str:
    """``url`` with any password replaced by ***, for messages (secrets are never shown)."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def _first_line(exc: BaseException) -> str:
    """An exception's first line (its type's name when it has no message)."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _check_pages(path: Path) -> None:
    """A damaged page with the header intact opens, then fails mid-query with a traceback:
    SQLite's quick check first (read-only, a few milliseconds for a study's database)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            verdict = conn.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        verdict = str(exc)
    if verdict != "ok":
        said = [ln for ln in verdict.splitlines() if ln.strip() and not ln.startswith("***")]
        raise StudyError(
            f"cannot open study database {path}: damaged ({(said or [verdict])[0]}); nothing was "
            "changed (restore it from a copy, or use another --study)"
        )


def _rdb(url: str, extra: dict[str, Any]) -> optuna.storages.RDBStorage:
    """An RDB storage for ``url`` with ``extra`` arguments (heartbeats), without Optuna's
    experimental-feature warning."""
    with warnings.catch_warnings():
        # heartbeat_interval is marked experimental (since Optuna 2.9); it is what we want.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, **extra)


def _sqlite_storage(
    url: str, extra: dict[str, Any], *, writing: bool = True
) -> optuna.storages.RDBStorage:
    """A new study database is created in WAL mode, and WAL databases commit without fsync;
    a writer's transactions take SQLite's write lock when they begin.

    Optuna commits every attribute, parameter and state change on its own; in SQLite's default
    rollback-journal mode each commit waits for two fsyncs, which was most of the tuner's
    per-trial time (benchmarks/overhead.py). In WAL mode with ``synchronous=NORMAL`` a commit
    survives a crash or kill of the process (the WAL is recovered on the next open); only a
    power loss may roll back the last commits, never corrupt the file. Existing databases keep
    the journal mode they have, so opening a committed study never rewrites it.

    SQLite has no ``SELECT ... FOR UPDATE``: when workers (``--workers N``) share the study,
    Optuna's check that a queued trial is still WAITING, then its update to RUNNING, let two
    workers pop the same trial. ``BEGIN IMMEDIATE`` (SQLAlchemy's recipe for pysqlite) makes
    each transaction of a writer atomic against the others'; readers (reports, the dashboard)
    keep WAL's lock-free reads.
    """
    path = Path(url.removeprefix(SQLITE))  # sqlite:////abs/file or sqlite:///relative/file
    if not path.exists() and path.parent.is_dir():
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
    elif path.is_file():
        _check_pages(path)
    try:
        storage = _rdb(url, extra)
    except sqlalchemy.exc.SQLAlchemyError as exc:
        # Not a database (overwritten, cut short), or not readable: never touch it further.
        why = _first_line(getattr(exc, "orig", None) or exc)
        raise StudyError(
            f"cannot open study database {path}: {why}; nothing was changed (restore it from "
            "a copy, or use another --study)"
        ) from exc

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        """Per connection: WAL's synchronous level, and, for writers, transactions that take the
        write lock as they begin (BEGIN IMMEDIATE)."""
        cur = dbapi_conn.cursor()
        if cur.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()
        if writing:
            dbapi_conn.isolation_level = None  # pysqlite's own BEGIN off: SQLAlchemy's below

    def on_begin(conn: sqlalchemy.engine.Connection) -> None:
        """Every transaction takes SQLite's write lock at once: two workers never pop one queued
        trial."""
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    sqlalchemy.event.listen(storage.engine, "connect", on_connect)
    if writing:
        sqlalchemy.event.listen(storage.engine, "begin", on_begin)
    storage.engine.dispose()  # connections opened while creating the schema predate the hook
    return storage


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True, slots=True)
class StudyPaths:
    """Folder layout of one study."""

    name: str
    root: Path
    storage_url: str

    @classmethod
    def create(cls, name: str, studies_dir: Path, storage_url: str | None = None) -> StudyPaths:
        """Paths of study ``name`` under ``studies_dir``; storage defaults to its SQLite file.

        Raises StudyError for a name that cannot be a folder.
        """
        if not _NAME.match(name):
            raise StudyError(f"study name {name!r}: use letters, digits, '_', '.', '-'")
        root = studies_dir / name
        url = storage_url or f"sqlite:///{(root / 'study.db').resolve()}"
        return cls(name=name, root=root, storage_url=url)

    def trial_dir(self, number: int) -> Path:
        """The folder of trial ``number`` (layout in ``tuner.schema``)."""
        return TrialFolder.of(self.root, number).path


def load_study(paths: StudyPaths, *, writing: bool = False) -> optuna.Study:
    """Open an existing study; StudyError if it does not exist. Reading (``writing`` False)
    accepts a journal that ends mid-record (``journal_problem`` says so to the user)."""
    url = paths.storage_url
    # Never create an empty database while looking for a study: the file must be there.
    if url.startswith(SQLITE) and not Path(url.removeprefix(SQLITE)).exists():
        where = paths.root if url.endswith(f"{paths.name}/study.db") else redact(url)
        raise StudyError(f"no study {paths.name!r} in {where} (run `tuner optimize` first)")
    try:
        storage = open_storage(paths.storage_url, writing=writing)
        if storage is None:
            raise StudyError("an in-memory study cannot be reopened")
        return optuna.load_study(study_name=paths.name, storage=storage)
    except KeyError as exc:
        raise StudyError(f"no study {paths.name!r} in {redact(paths.storage_url)}") from exc


@contextlib.contextmanager
def study_lock(paths: StudyPaths) -> Iterator[None]:
    """One writer per study: an exclusive ``flock`` on ``STUDY/.lock`` for as long as it runs,
    and, when the study lives in a file elsewhere (``--storage journal:///F`` or
    ``sqlite:///F``), on ``F.NAME.lock`` beside that file too: the lock follows the storage,
    so two ``--studies-dir`` over one journal cannot both write one study.

    A second ``tuner optimize`` (or ``validate``) on the same study refuses with one line
    instead of failing the first one's running trial as stale. The kernel drops the lock when
    the holder dies, kill -9 included, so a stale lock never blocks the next run. (Several
    workers sharing one study over a database is the scale-out mode, not this; a PostgreSQL
    study has no file to lock beside.)
    """
    paths.root.mkdir(parents=True, exist_ok=True)
    locks = [paths.root / ".lock"]
    for prefix in (JOURNAL, SQLITE):
        if paths.storage_url.startswith(prefix):
            file = Path(("/" if prefix == JOURNAL else "") + paths.storage_url.removeprefix(prefix))
            if file.resolve().parent != paths.root.resolve():
                locks.append(file.with_name(f"{file.name}.{paths.name}.lock"))
    with contextlib.ExitStack() as held:
        for path in locks:
            held.enter_context(_flock(path, paths.name))
        yield


@contextlib.contextmanager
def _flock(path: Path, name: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (its text says who holds it), or one line."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text(errors="replace").strip() or "another process"
            raise StudyError(
                f"study {name!r} is being run by {holder}: wait for it to finish or stop "
                "it (Ctrl-C), then run the same command again"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} (since {time.strftime('%H:%M:%S')})".encode())
        yield
    finally:
        os.close(fd)  # releases the lock
