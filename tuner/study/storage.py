"""Where a study lives: ``studies/NAME/`` with its SQLite database and one folder per trial."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import optuna

from tuner.errors import StudyError

__all__ = ["MEMORY", "StudyPaths", "load_study", "open_storage"]

MEMORY = "memory://"  # Optuna's in-memory storage (benchmarks, dry runs)
JOURNAL = "journal:///"  # journal:///path/to/file.log: Optuna's append-only journal file


def open_storage(url: str) -> str | optuna.storages.BaseStorage | None:
    """What ``optuna.create_study(storage=...)`` takes for ``url``: RDB URLs pass through,
    ``journal:///PATH`` opens a JournalStorage on a file, ``memory://`` is in-memory (None)."""
    if url == MEMORY:
        return None
    if url.startswith(JOURNAL):
        from optuna.storages.journal import JournalFileBackend

        path = Path("/" + url.removeprefix(JOURNAL))
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    return url


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True, slots=True)
class StudyPaths:
    """Folder layout of one study."""

    name: str
    root: Path
    storage_url: str

    @classmethod
    def create(cls, name: str, studies_dir: Path, storage_url: str | None = None) -> StudyPaths:
        if not _NAME.match(name):
            raise StudyError(f"study name {name!r}: use letters, digits, '_', '.', '-'")
        root = studies_dir / name
        url = storage_url or f"sqlite:///{(root / 'study.db').resolve()}"
        return cls(name=name, root=root, storage_url=url)

    def trial_dir(self, number: int) -> Path:
        return self.root / "trials" / f"{number:04d}"


def load_study(paths: StudyPaths) -> optuna.Study:
    """Open an existing study read/write; StudyError if it does not exist."""
    if paths.storage_url.startswith("sqlite:///") and not (paths.root / "study.db").exists():
        raise StudyError(f"no study {paths.name!r} in {paths.root} (run `tuner optimize` first)")
    try:
        storage = open_storage(paths.storage_url)
        if storage is None:
            raise StudyError("an in-memory study cannot be reopened")
        return optuna.load_study(study_name=paths.name, storage=storage)
    except KeyError as exc:
        raise StudyError(f"no study {paths.name!r} in {paths.storage_url}") from exc
