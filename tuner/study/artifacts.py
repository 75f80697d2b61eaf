"""A trial's files in Optuna's artifact store, so that any host reads the study whole.

Each trial's ``measurements.json`` (or ``failure.json``), ``server.log``, ``command.json`` and
compose file are uploaded as the trial's artifacts just before it is told (Optuna attaches
artifacts to a trial that still runs). The store is a folder (``FileSystemArtifactStore``,
default ``STUDY/artifacts``) or an S3-compatible bucket (``s3://bucket``, Optuna's
``Boto3ArtifactStore``; credentials from boto3's usual environment, never stored). Its location
is kept with the study, so that ``tuner report`` on another host fetches the trial folders it
lacks (:func:`fetch_missing`) and ``tuner dashboard`` shows the files on each trial's page.
"""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.artifacts import (
    FileSystemArtifactStore,
    download_artifact,
    get_all_artifact_meta,
    upload_artifact,
)
from optuna.artifacts._protocol import ArtifactStore  # the Protocol both stores implement

from tuner.errors import ConfigError
from tuner.schema import TrialFolder

__all__ = [
    "STORE_ATTR",
    "ArtifactStore",
    "UPLOADED",
    "fetch_missing",
    "open_store",
    "store_of",
    "upload_files",
]

STORE_ATTR = "artifact_store"  # the study's user attribute naming its store
# What a trial folder holds that another host's report or a reader in the dashboard needs.
UPLOADED = ("measurements.json", "failure.json", "server.log", "command.json", "compose.yml")


def open_store(where: str) -> ArtifactStore:
    """The artifact store at ``where``: ``s3://bucket`` or a folder (created)."""
    if where.startswith("s3://"):
        try:
            import boto3  # type: ignore[import-not-found]
            from optuna.artifacts import Boto3ArtifactStore
        except ImportError as exc:
            raise ConfigError(
                f"artifact store {where}: needs boto3 (pip install 'vllm-bayes-tuner[s3]')",
                key="--artifacts",
            ) from exc
        bucket = where.removeprefix("s3://").strip("/")
        if not bucket or "/" in bucket:
            raise ConfigError(f"artifact store {where}: give s3://BUCKET", key="--artifacts")
        return Boto3ArtifactStore(bucket, client=boto3.client("s3"))
    path = Path(where).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))


def store_of(study: optuna.Study) -> str | None:
    """Where the study's artifacts are (as given to :func:`open_store`), if it keeps any."""
    where = study.user_attrs.get(STORE_ATTR)
    return str(where) if where else None


def upload_files(
    study: optuna.Study, trial: optuna.Trial, folder: Path, store: ArtifactStore
) -> int:
    """Upload the files of ``folder`` named in :data:`UPLOADED` as ``trial``'s artifacts
    (before the trial is told); how many."""
    n = 0
    for name in UPLOADED:
        path = folder / name
        if path.is_file():
            upload_artifact(
                artifact_store=store,
                file_path=str(path),
                study_or_trial=trial,
                storage=study._storage,
            )
            n += 1
    return n


def fetch_missing(study: optuna.Study, root: Path) -> int:
    """Download into ``root/trials/NNNN/`` the files of trials this host has no folder for
    (they ran on another host); how many files. Nothing when the study keeps no store."""
    where = store_of(study)
    if where is None:
        return 0
    store: ArtifactStore | None = None
    n = 0
    for t in study.get_trials(deepcopy=False):
        folder = TrialFolder.of(root, t.number).path
        if folder.is_dir():
            continue  # ran here (or fetched before)
        metas = get_all_artifact_meta(t, storage=study._storage)
        if not metas:
            continue
        store = store or open_store(where)
        folder.mkdir(parents=True, exist_ok=True)
        for meta in metas:
            target = folder / Path(meta.filename).name  # never outside the folder
            download_artifact(
                artifact_store=store, file_path=str(target), artifact_id=meta.artifact_id
            )
            n += 1
    return n
