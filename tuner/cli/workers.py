"""``tuner worker`` and ``tuner optimize --workers N``: several workers on one study.

Each worker is its own process running Optuna's ask/tell loop on the shared storage
(``tuner.study.workers`` says how they stay out of each other's way). ``optimize --workers N``
queues the seeds once under the study's lock, starts N ``tuner worker`` processes on disjoint
GPU slots, and waits for them; ``tuner worker`` alone joins a study from another host.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from tuner.cli._common import (
    PROFILE,
    SEEDS,
    SPACE,
    STUDIES,
    ArtifactsOpt,
    EarlyStopOpt,
    GpusOpt,
    GraceOpt,
    HeartbeatOpt,
    ObjectiveOpt,
    ProfileOpt,
    SettleAfterOpt,
    SettleShareOpt,
    SpaceOpt,
    StorageOpt,
    StudiesOpt,
    app,
    objective_path,
    out,
    parse_gpus,
    settle,
)
from tuner.cli._progress import run_study
from tuner.config import Profile, SearchSpace, load_objective, load_profile, load_seeds, load_space
from tuner.deploy import confine
from tuner.errors import TunerError
from tuner.study import (
    Heartbeat,
    RunSettings,
    StudyPaths,
    StudyRunner,
    load_study,
    sigterm_as_interrupt,
)
from tuner.types import WorkerSlot


@app.command()
def worker(
    study: Annotated[str, typer.Argument(help="study name (created by tuner optimize)")],
    trials: Annotated[
        int, typer.Option("--trials", min=1, help="deployments the study should reach")
    ] = 40,
    storage: StorageOpt = None,
    gpus: GpusOpt = None,
    slot: Annotated[
        int, typer.Option("--slot", min=0, help="this worker's index on its host (port offset)")
    ] = 0,
    space: SpaceOpt = SPACE,
    objective: ObjectiveOpt = None,
    profile: ProfileOpt = PROFILE,
    studies_dir: StudiesOpt = STUDIES,
    sampler_seed: Annotated[
        int | None, typer.Option("--sampler-seed", help="default: a fresh one per worker")
    ] = None,
    heartbeat: HeartbeatOpt = 10,
    grace: GraceOpt = 60,
    artifacts: ArtifactsOpt = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=1, help="seconds; no new deployment after")
    ] = None,
    settle_after: SettleAfterOpt = 0,
    settle_share: SettleShareOpt = 0.01,
    early_stop: EarlyStopOpt = True,
) -> None:
    """Join a study as one more worker: deploy what the sampler proposes until it holds TRIALS."""
    sp = load_space(space)
    prof = load_profile(profile)
    obj = objective_path(objective, prof)
    ws = WorkerSlot(slot, tuple(parse_gpus(gpus) or ()) or None)
    paths = StudyPaths.create(study, studies_dir, storage)
    load_study(paths)  # one line if the study does not exist: tuner optimize creates it
    settings = RunSettings(
        n_trials=trials,
        sampler_seed=sampler_seed,
        enqueue_seeds=False,
        exclusive=False,
        heartbeat=Heartbeat(heartbeat, grace),
        slot=ws.label(),
        artifacts=artifacts,
        deadline=time.monotonic() + timeout if timeout else None,
        settle=settle(settle_after, settle_share),
        early_stop=early_stop,
    )
    run_study(paths, sp, SEEDS, obj, confine(prof, ws), settings, plain=f"[{ws.label()}]")


def run_workers(
    paths: StudyPaths,
    sp: SearchSpace,
    spaces: tuple[Path, Path, Path, Path],
    prof: Profile,
    settings: RunSettings,
    slots: list[WorkerSlot],
) -> None:
    """Queue the seeds once, start one worker process per slot (``plan_slots``), wait for all.

    ``spaces``: the space, seeds, objective and profile files the workers load again. Ctrl-C
    or SIGTERM stops every worker (each stops its server and marks its trial interrupted).
    """
    space, seeds, objective, profile = spaces
    sd = tuple(load_seeds(seeds, sp)) if settings.enqueue_seeds else ()
    runner = StudyRunner(
        paths=paths,
        space=sp,
        seeds=sd,
        objective=load_objective(objective),
        profile=prof,
        settings=settings,
    )
    queued = runner.queue_seeds()
    hb = settings.heartbeat or Heartbeat()
    out.print(f"study {paths.name}: {len(sd)} seeds queued ({queued} trials); {len(slots)} "
              f"workers on {_where(slots)}")  # fmt: skip
    procs: list[subprocess.Popen[bytes]] = []
    with sigterm_as_interrupt():
        try:
            for s in slots:
                cmd = [
                    sys.executable, "-m", "tuner.cli", "worker", paths.name,
                    "--trials", str(settings.n_trials), "--storage", paths.storage_url,
                    "--slot", str(s.index), "--space", str(space), "--objective", str(objective),
                    "--profile", str(profile), "--studies-dir", str(paths.root.parent),
                    "--heartbeat", str(hb.interval_s), "--grace", str(hb.grace_s),
                    "--sampler-seed", str((settings.sampler_seed or 0) * 1000 + s.index),
                ]  # fmt: skip
                if s.gpus:
                    cmd += ["--gpus", ",".join(s.gpus)]
                rule = settings.settle
                cmd += ["--settle-after", str(rule.after if rule else 0)]
                if rule:
                    cmd += ["--settle-share", str(rule.share)]
                if not settings.early_stop:
                    cmd.append("--no-early-stop")
                if settings.artifacts:
                    cmd += ["--artifacts", settings.artifacts]
                if settings.deadline is not None:  # --timeout covers the workers too
                    cmd += ["--timeout", f"{max(1.0, settings.deadline - time.monotonic()):.0f}"]
                procs.append(subprocess.Popen(cmd))
            codes = [p.wait() for p in procs]
        except KeyboardInterrupt:
            for p in procs:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait()
            raise
    failed = [f"worker {i} (exit {c})" for i, c in enumerate(codes) if c != 0]
    if failed:
        raise TunerError(f"{', '.join(failed)} stopped early; finished trials are kept")


def _where(slots: list[WorkerSlot]) -> str:
    """Where the workers run: this host, or each one's GPUs."""
    if all(s.gpus is None for s in slots):
        return "this host"
    return "; ".join(f"{s.index}: GPUs {','.join(s.gpus or ())}" for s in slots)
