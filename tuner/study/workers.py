"""Several workers on one study: who is alive, whose trial was lost, and which GPUs each owns.

Optuna's distributed mode is the model: every worker runs its own ask/tell loop against the
shared storage (PostgreSQL across hosts, the journal file or SQLite on one host). What Optuna
leaves to the caller lives here:

- **Liveness on one host.** Each worker holds an exclusive ``flock`` on
  ``STUDY/.workers/RUN_ID.lock`` for as long as it runs and tags its trials ``worker=RUN_ID``.
  The kernel drops the lock when the process dies, kill -9 included, so a RUNNING trial whose
  worker's lock can be taken is lost *now*: no grace period, and no storage support needed (the
  journal file has no heartbeats).
- **Liveness across hosts.** RDB storages get Optuna's heartbeats (``heartbeat_interval``,
  ``grace_period``); ``optuna.storages.fail_stale_trials`` fails a trial whose worker stopped
  beating, and :func:`retry_lost` (the storage's stale-trial callback) puts its point back.

A worker's GPUs and port (``--workers N --gpus 0,1,2,3``) are its deployer's business:
``tuner.deploy.plan_slots`` and ``tuner.deploy.confine``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.errors import Reason
from tuner.trial import RETRY_ATTRS, Attr

__all__ = [
    "alive",
    "live_workers",
    "lost_trials",
    "reap",
    "retry_lost",
    "worker_lease",
]


def _workers_dir(root: Path) -> Path:
    """Where the study's worker locks live."""
    return root / ".workers"


@contextlib.contextmanager
def worker_lease(root: Path) -> Iterator[str]:
    """This process as a worker of the study in ``root``: a fresh run id, its lock held.

    The run id names the host and pid for people reading the dashboard, and a random part so
    that a recycled pid never passes for a dead worker.
    """
    folder = _workers_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    run_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path = folder / f"{run_id}.lock"
    # Locked under a temporary name, then renamed: nobody ever sees the file unlocked.
    tmp = folder / f".{run_id}.tmp"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}".encode())
        tmp.replace(path)
        yield run_id
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # before the close: a reader never takes the lock of a live worker
        os.close(fd)


def alive(root: Path, run_id: str) -> bool | None:
    """True if worker ``run_id`` runs on this host, False if it ran here and died, None if it
    never ran here (another host: only heartbeats can tell)."""
    path = _workers_dir(root) / f"{run_id}.lock"
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases the lock just taken
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # its worker is gone: the next look answers None, and is cheaper
    return False


def live_workers(root: Path) -> list[str]:
    """Run ids of the workers of the study in ``root`` running on this host now."""
    folder = _workers_dir(root)
    ids = sorted(p.stem for p in folder.glob("*.lock")) if folder.is_dir() else []
    return [i for i in ids if alive(root, i)]


def lost_trials(study: optuna.Study, root: Path, *, exclusive: bool) -> list[FrozenTrial]:
    """RUNNING trials whose worker is known dead.

    ``exclusive``: the caller holds the study's lock (``tuner optimize`` on one host), so a
    RUNNING trial of a worker not running here, or of no recorded worker, is lost as well.
    Otherwise such trials are left to the heartbeats.
    """
    lost = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get(Attr.WORKER)
        state = alive(root, str(worker)) if worker else None
        # A trial of no recorded worker predates workers (or its worker died right after
        # ask): under the study's lock it can only be a dead run's.
        if state is False or (state is None and exclusive and (not worker or not _beating(study))):
            lost.append(t)
    return lost


def _beating(study: optuna.Study) -> bool:
    """Whether the storage runs heartbeats (then another host's dead worker is found by them)."""
    # With heartbeats on, a trial of another host is failed by fail_stale_trials after its
    # grace period; without them, the study lock is the only evidence there is.
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(study._storage)


def reap(study: optuna.Study, root: Path, *, exclusive: bool) -> None:
    """Fail the trials of dead workers and put their points back in the queue: on this host at
    once (their locks are free), elsewhere once their heartbeats stop."""
    from tuner.study._trial import record_failure

    for t in lost_trials(study, root, exclusive=exclusive):
        who = t.user_attrs.get(Attr.WORKER, "an earlier run")
        try:
            record_failure(
                study, optuna.Trial(study, t._trial_id), Reason.INTERRUPTED,
                f"the worker holding this trial ({who}) was killed",
            )  # fmt: skip
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker got there first, and retried it
        retry_lost(study, t)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # heartbeats; the storage's callback retries


def retry_lost(study: optuna.Study, trial: FrozenTrial) -> None:
    """Put a lost trial's point back in the queue for whichever worker asks next.

    Optuna's ``RetryFailedTrialCallback`` does the same but copies every user attribute, and
    here those of the lost attempt (``deployed``, ``trial_dir``) would pass for the retry's.
    """
    attrs: dict[str, Any] = {k: trial.user_attrs[k] for k in RETRY_ATTRS if k in trial.user_attrs}
    attrs[Attr.RETRY_OF] = trial.number
    # A queued trial lost before its parameters were drawn still has them as fixed ones.
    params = trial.params or trial.system_attrs.get("fixed_params")
    if params:
        study.enqueue_trial(dict(params), user_attrs=attrs, skip_if_exists=False)
