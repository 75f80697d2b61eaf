"""``tuner optimize``, ``validate``, ``sweep``: run a study, validate its pick, sweep a space."""

from __future__ import annotations

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
    SeedsOpt,
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
    trial_line,
)
from tuner.cli._progress import run_study
from tuner.cli.workers import run_workers
from tuner.config import Profile, SearchSpace, load_objective, load_profile, load_space, violations
from tuner.deploy import confine, fixed_params, keep, plan_slots
from tuner.errors import ConfigError, TunerError
from tuner.study import (
    Heartbeat,
    RunSettings,
    StudyPaths,
    ValidationSettings,
    Validator,
    load_study,
    sigterm_as_interrupt,
)
from tuner.study.storage import study_lock


@app.command()
def optimize(
    trials: Annotated[
        int, typer.Option("--trials", min=1, help="deployed configurations to reach")
    ] = 40,
    study: Annotated[
        str | None, typer.Option("--study", help="study name (default: PROFILE-SPACE)")
    ] = None,
    space: SpaceOpt = SPACE,
    seeds: SeedsOpt = SEEDS,
    objective: ObjectiveOpt = None,
    profile: ProfileOpt = PROFILE,
    studies_dir: StudiesOpt = STUDIES,
    storage: StorageOpt = None,
    sampler_seed: Annotated[int, typer.Option("--sampler-seed")] = 0,
    sampler: Annotated[
        str, typer.Option("--sampler", help="tpe | tpe-independent | random | nsga2 | grid")
    ] = "tpe",
    no_seeds: Annotated[bool, typer.Option("--no-seeds", help="do not enqueue the seeds")] = False,
    keep_best: Annotated[
        bool,
        typer.Option(
            "--keep-best",
            help="compose deployer: leave the compose file set to the recommended configuration",
        ),
    ] = False,
    no_precheck: Annotated[
        bool,
        typer.Option(
            "--no-precheck",
            help="deploy points the validity rules reject (checks the rules against your vLLM)",
        ),
    ] = False,
    no_validate: Annotated[
        bool, typer.Option("--no-validate", help="skip the validation rounds after the search")
    ] = False,
    validate_top: Annotated[int, typer.Option("--validate-top", min=1)] = 3,
    validate_rounds: Annotated[int, typer.Option("--validate-rounds", min=1)] = 2,
    validate_extra: Annotated[
        int | None,
        typer.Option(
            "--validate-extra",
            min=0,
            help="deployments for candidates still tied after the rounds "
            "[default: what a quarter of the search's deployments leaves]",
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", min=1, help="seconds for the whole study, validation included"),
    ] = None,
    stop_when_met: Annotated[
        bool,
        typer.Option(
            "--stop-when-met",
            help="after the seeds, end the search once a trial meets the success criteria "
            "with intervals within the objectives' precision (then validate it)",
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="resume even if space/objective/server changed")
    ] = False,
    soak: Annotated[
        str | None,
        typer.Option("--soak", help="then keep the pick under the workload this long (10m)"),
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", min=1, help="worker processes sharing the study")
    ] = 1,
    warm_start: Annotated[
        list[str] | None,
        typer.Option(
            "--warm-start",
            help="start from another study's measurements (copied when they compare, its "
            "front queued first when only the model or workload differs); repeatable",
        ),
    ] = None,
    settle_after: SettleAfterOpt = 0,
    settle_share: SettleShareOpt = 0.01,
    early_stop: EarlyStopOpt = True,
    gpus: GpusOpt = None,
    heartbeat: HeartbeatOpt = 10,
    grace: GraceOpt = 60,
    artifacts: ArtifactsOpt = None,
) -> None:
    """Create or resume a study, run trials until it holds TRIALS deployments, then validate."""
    from tuner.cli.soak import parse_duration, run_soak

    soak_s = parse_duration(soak) if soak else None
    sp, prof = load_space(space), load_profile(profile)
    if keep_best:
        keep(prof, None, sp.managed_flags, "")  # refused at once by a kind that cannot
    slots = plan_slots(workers, parse_gpus(gpus), prof)  # refuses --workers 2 on compose, at once
    if stop_when_met and workers > 1:
        # Each worker would judge alone while the others keep deploying: one process decides.
        raise ConfigError("--stop-when-met runs with --workers 1", key="workers")
    objective = objective_path(objective, prof)
    deadline = time.monotonic() + timeout if timeout else None
    settings = RunSettings(n_trials=trials, sampler_seed=sampler_seed, enqueue_seeds=not no_seeds,
                           precheck=not no_precheck, sampler=sampler, deadline=deadline,
                           force=force, heartbeat=Heartbeat(heartbeat, grace), artifacts=artifacts,
                           stop_when_met=stop_when_met, early_stop=early_stop,
                           warm_start=tuple(warm_start or ()),
                           settle=settle(settle_after, settle_share))  # fmt: skip
    name = study if study is not None else f"{prof.name}-{sp.name}"  # "" is refused, not replaced
    paths = StudyPaths.create(name, studies_dir, storage)
    try:
        if workers > 1:
            with study_lock(paths):
                run_workers(paths, sp, (space, seeds, objective, profile), prof, settings, slots)
        else:
            run_study(paths, sp, seeds, objective, confine(prof, slots[0]), settings)
        # A running server (external) is measured as it is: there is nothing to redeploy.
        if not no_validate and fixed_params(prof, sp) is None:
            plan = ValidationSettings(
                validate_top, validate_rounds, validate_extra, deadline=deadline
            )
            _validate(paths, sp, objective, prof, plan)
        if soak_s:
            run_soak(paths, prof, objective, soak_s)
    finally:
        _hand_back(prof)  # finished, failed or interrupted: the user's service as it was
    if keep_best:
        _keep_best(paths, prof, sp)
    out.print(f"next: tuner report {paths.name}")


def _validate(
    paths: StudyPaths, sp: SearchSpace, objective: Path, prof: Profile, plan: ValidationSettings
) -> None:
    """Redeploy the search's candidates and the baseline in interleaved rounds, then the ones
    still tied; print the verdict."""
    validator = Validator(
        paths=paths,
        space=sp,
        objective=load_objective(objective),
        profile=prof,
        settings=plan,
        on_trial_end=lambda o: out.print(trial_line(o)),
    )
    names = ", ".join(f"#{c.number}" for c in validator.candidates)
    more = f", then up to {validator.extra} for the ones still tied" if validator.extra else ""
    out.print(f"validation: {plan.rounds} round(s) of {names} on held-out conversations{more}")
    result = validator.run()
    if result.stopped_by_deadline:
        out.print(f"validation stopped by --timeout after {result.done}/{result.planned}")
    if result.summary is not None:
        out.print(result.summary.words(), markup=False, highlight=False)


@app.command()
def validate(
    study: Annotated[str, typer.Argument(help="study name")],
    top: Annotated[int, typer.Option("--top", min=1, help="candidates besides the baseline")] = 3,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="deployments each")] = 2,
    extra: Annotated[
        int | None,
        typer.Option(
            "--extra",
            min=0,
            help="deployments for candidates still tied after the rounds "
            "[default: what a quarter of the search's deployments leaves]",
        ),
    ] = None,
    space: SpaceOpt = SPACE,
    objective: ObjectiveOpt = None,
    profile: ProfileOpt = PROFILE,
    studies_dir: StudiesOpt = STUDIES,
    storage: StorageOpt = None,
    timeout: Annotated[float | None, typer.Option("--timeout", min=1)] = None,
) -> None:
    """Redeploy the top candidates and the baseline in interleaved rounds; resumable."""
    paths = StudyPaths.create(study, studies_dir, storage)
    load_study(paths)  # a clear error if it does not exist
    deadline = time.monotonic() + timeout if timeout else None
    with sigterm_as_interrupt():
        prof = load_profile(profile)
        plan = ValidationSettings(top, rounds, extra, deadline=deadline)
        _validate(paths, load_space(space), objective_path(objective, prof), prof, plan)
    out.print(f"next: tuner report {paths.name}")


@app.command()
def sweep(
    study: Annotated[
        str | None, typer.Option("--study", help="study name (default: PROFILE-SPACE-sweep)")
    ] = None,
    space: SpaceOpt = SPACE,
    objective: ObjectiveOpt = None,
    profile: ProfileOpt = PROFILE,
    studies_dir: StudiesOpt = STUDIES,
    storage: StorageOpt = None,
) -> None:
    """Evaluate every valid point of the space (Optuna GridSampler); resumable. Ground truth."""
    sp = load_space(space)
    prof = load_profile(profile)
    objective = objective_path(objective, prof)
    fixed = prof.server.to_args()
    valid = [p for p in sp.points() if not violations([*fixed, *sp.to_flags(p)])]
    out.print(f"{sp.name}: {len(valid)} valid points of {sp.size}")
    settings = RunSettings(n_trials=len(valid), enqueue_seeds=False, sampler="grid")
    name = study if study is not None else f"{prof.name}-{sp.name}-sweep"
    paths = StudyPaths.create(name, studies_dir, storage)
    run_study(paths, sp, SEEDS, objective, prof, settings)  # no validation: it is the truth
    out.print(f"next: tuner report {paths.name}")


def _hand_back(prof: Profile) -> None:
    """Give the user's service back (compose), printing what was done; a failure to do so is
    printed, never raised over the error that ended the study."""
    from tuner.deploy import hand_back

    try:
        for line in hand_back(prof):
            out.print(line)
    except TunerError as exc:  # never hide the error that brought us here
        out.print(f"[red]could not give the service back: {exc}[/red]")


def _keep_best(paths: StudyPaths, prof: Profile, sp: SearchSpace) -> None:
    """``--keep-best``: leave the user's service running the recommended configuration."""
    from tuner.report import recommend

    rec = recommend(load_study(paths), root=paths.root)
    if rec is None:
        out.print("--keep-best: no completed trial, nothing changed")
        return
    why = f"study {paths.name}, trial {rec.trial.number}, {rec.name}"
    out.print(keep(prof, rec.flags, sp.managed_flags, why))
