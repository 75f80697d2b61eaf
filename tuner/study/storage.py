"""Where a study lives: ``studies/NAME/`` with its SQLite database and one folder per trial."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import optuna

from tuner.errors import StudyError

__all__ = ["StudyPaths", "load_study"]

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
        return optuna.load_study(study_name=paths.name, storage=paths.storage_url)
    except KeyError as exc:
        raise StudyError(f"no study {paths.name!r} in {paths.storage_url}") from exc
