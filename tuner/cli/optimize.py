"""``tuner optimize``, ``validate``, ``sweep``: run a study, validate its pick, sweep a space."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tuner.cli._common import (
    PROFILE,
    SEEDS,
    SPACE,
    STUDIES,
    ObjectiveOpt,
    ProfileOpt,
    SeedsOpt,
    SpaceOpt,
    StorageOpt,
    StudiesOpt,
    app,
    objective_path,
    out,
    trial_line,
)
from tuner.cli.workers import ArtifactsOpt, GpusOpt, GraceOpt, HeartbeatOpt, parse_gpus, run_workers
from tuner.config import (
    ExternalConfig,
    Profile,
    SearchSpace,
    load_objective,
    load_profile,
    load_seeds,
    load_space,
    violations,
)
from tuner.errors import ConfigError, TunerError
from tuner.study import (
    Heartbeat,
    RunSettings,
    StudyPaths,
    StudyRunner,
    TrialOutcome,
    default_extra,
    deployments,
    load_study,
    plan_slots,
    sigterm_as_interrupt,
    slot_profile,
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
    gpus: GpusOpt = None,
    heartbeat: HeartbeatOpt = 10,
    grace: GraceOpt = 60,
    artifacts: ArtifactsOpt = None,
) -> None:
    """Create or resume a study, run trials until it holds TRIALS deployments, then validate."""
    from tuner.cli.soak import parse_duration

    soak_s = parse_duration(soak) if soak else None
    sp = load_space(space)
    prof = load_profile(profile)
    gpu_ids = parse_gpus(gpus)
    slots = plan_slots(workers, gpu_ids, prof)  # refuses --workers 2 on compose, at once
    if stop_when_met and workers > 1:
        # Each worker would judge alone while the others keep deploying: one process decides.
        raise ConfigError("--stop-when-met runs with --workers 1", key="workers")
    objective = objective_path(objective, prof)
    deadline = time.monotonic() + timeout if timeout else None
    settings = RunSettings(
        n_trials=trials,
        sampler_seed=sampler_seed,
        enqueue_seeds=not no_seeds,
        precheck=not no_precheck,
        sampler=sampler,
        deadline=deadline,
        force=force,
        heartbeat=Heartbeat(heartbeat, grace),
        artifacts=artifacts,
        stop_when_met=stop_when_met,
    )
    paths = StudyPaths.create(
        study if study is not None else f"{prof.name}-{sp.name}", studies_dir, storage
    )
    try:
        if workers > 1:
            with study_lock(paths):
                files = (space, seeds, objective, profile)
                run_workers(paths, sp, files, prof, settings, slots)
        else:
            runner = _run(paths, sp, seeds, objective, slot_profile(prof, slots[0]), settings)
            if runner.reclaimed:
                out.print(f"cleaned up after an earlier run: {', '.join(runner.reclaimed)}")
        if not no_validate and not isinstance(prof.deployer, ExternalConfig):
            plan = _Plan(validate_top, validate_rounds, validate_extra)
            _validate(paths, sp, objective, prof, plan, deadline)
        if soak_s:
            from tuner.cli.soak import run_soak

            run_soak(paths, prof, objective, soak_s)
    finally:
        _hand_back(prof)  # finished, failed or interrupted: the user's service as it was
    if keep_best:
        _keep_best(prof, sp, paths)
    out.print(f"next: tuner report {paths.name}")


def _run(
    paths: StudyPaths,
    sp: SearchSpace,
    seeds: Path,
    objective: Path,
    prof: Profile,
    settings: RunSettings,
    *,
    plain: str | None = None,
) -> StudyRunner:
    """Run the study with a progress bar and one line per trial; the runner, for its result.
    ``plain``: no progress bar, each line prefixed with it (a worker beside others)."""
    sd = load_seeds(seeds, sp) if settings.enqueue_seeds else ()
    obj = load_objective(objective)
    if plain is not None:
        runner = StudyRunner(
            paths=paths, space=sp, seeds=tuple(sd), objective=obj, profile=prof,
            settings=settings, on_trial_end=lambda o: out.print(f"{escape(plain)} {trial_line(o)}"),
        )  # fmt: skip
        result = runner.run()
        out.print(f"{escape(plain)} done: {len(result.outcomes)} trials; the study holds "
                  f"{result.deployed} deployments")  # fmt: skip
        return runner
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=out,
        transient=True,
    ) as progress:
        task = progress.add_task(f"study {paths.name}", total=settings.n_trials)

        def started(number: int, params: dict[str, Any], seed: str | None) -> None:
            progress.update(task, description=f"trial {number} {seed or ''}".strip())

        def ended(o: TrialOutcome) -> None:
            progress.console.print(trial_line(o))
            if o.deployed:
                progress.advance(task)

        runner = StudyRunner(
            paths=paths,
            space=sp,
            seeds=tuple(sd),
            objective=obj,
            profile=prof,
            settings=settings,
            on_trial_start=started,
            on_trial_end=ended,
        )
        result = runner.run()
    extra = " (every valid point evaluated)" if result.exhausted else ""
    if result.goal_met is not None:
        out.print(
            f"search stopped early (--stop-when-met): trial {result.goal_met} meets the success "
            f"criteria with intervals within the objectives' precision"
        )
    out.print(
        f"study {result.study_name}: {result.deployed} deployments{extra}, {result.new_trials} new "
        f"trials this run; storage {paths.storage_url}"
    )
    return runner


@dataclass(frozen=True, slots=True)
class _Plan:
    """What validation deploys: ``top`` candidates + the baseline, ``rounds`` each, then
    ``extra`` deployments for the candidates still tied (None: up to a quarter of the search's
    deployments in all, the cost the decision-quality benchmark holds validation to)."""

    top: int
    rounds: int
    extra: int | None

    def extra_for(self, deployed: int, candidates: int) -> int:
        if self.extra is not None:
            return self.extra
        return default_extra(deployed, self.rounds, candidates)


def _validate(
    paths: StudyPaths,
    sp: SearchSpace,
    objective: Path,
    prof: Profile,
    plan: _Plan,
    deadline: float | None,
) -> None:
    """Redeploy the top candidates and the baseline in interleaved rounds, then the ones still
    tied; print the verdict."""
    from tuner.report import recommend, tied_candidates, validation_candidates
    from tuner.report.synthesis import baseline_trial
    from tuner.study import ValidationSettings, Validator

    st = load_study(paths)
    rec = recommend(st, root=paths.root, use_validation=False)
    if rec is None:
        out.print("validation: no completed trial to validate")
        return
    candidates = validation_candidates(st, rec, plan.top, baseline_trial(st))
    names = ", ".join(f"#{c.number}" for c in candidates)
    extra = plan.extra_for(deployments(st), len(candidates))
    more = f", then up to {extra} for the ones still tied" if extra else ""
    out.print(f"validation: {plan.rounds} round(s) of {names} on held-out conversations{more}")
    validator = Validator(
        paths=paths,
        space=sp,
        objective=load_objective(objective),
        profile=prof,
        candidates=candidates,
        settings=ValidationSettings(rounds=plan.rounds, extra=extra, deadline=deadline),
        on_trial_end=lambda o: out.print(trial_line(o)),
        tied=lambda vs, rnd: tied_candidates(st, vs, paths.root, rnd),
    )
    result = validator.run()
    if result.stopped_by_deadline:
        out.print(f"validation stopped by --timeout after {result.done}/{result.planned}")
    final = recommend(load_study(paths), root=paths.root)
    if final is not None and final.validation is not None:
        out.print(final.validation.words(), markup=False, highlight=False)


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
        path = objective_path(objective, prof)
        _validate(paths, load_space(space), path, prof, _Plan(top, rounds, extra), deadline)
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
    settings = RunSettings(
        n_trials=len(valid), enqueue_seeds=False, sampler="grid"
    )  # no validation
    paths = StudyPaths.create(
        study if study is not None else f"{prof.name}-{sp.name}-sweep", studies_dir, storage
    )
    _run(paths, sp, SEEDS, objective, prof, settings)
    out.print(f"next: tuner report {paths.name}")


def _hand_back(prof: Profile) -> None:
    from tuner.deploy import hand_back

    try:
        for line in hand_back(prof):
            out.print(line)
    except TunerError as exc:  # never hide the error that brought us here
        out.print(f"[red]could not give the service back: {exc}[/red]")


def _keep_best(prof: Profile, sp: SearchSpace, paths: StudyPaths) -> None:
    from tuner.config import ComposeConfig
    from tuner.deploy.compose_file import write_flags
    from tuner.report import recommend

    if not isinstance(prof.deployer, ComposeConfig):
        raise TunerError("--keep-best needs a compose profile (deployer.kind: compose)")
    rec = recommend(load_study(paths), root=paths.root)
    if rec is None:
        out.print("--keep-best: no completed trial, the compose file is unchanged")
        return
    flags = list(rec.trial.user_attrs.get("flags", []))
    note = (
        f"vllm-tuner: service {prof.deployer.service!r} set to the recommended configuration "
        f"(study {paths.name}, trial {rec.trial.number}, {rec.name}).\n"
        f"The original file is {prof.deployer.file.name}.vllm-tuner.bak; "
        f"`tuner restore {prof.deployer.file}` puts it back."
    )
    write_flags(prof.deployer.file, prof.deployer.service, flags, sp.managed_flags, note)
    from tuner.deploy.compose import ComposeDeployer

    ComposeDeployer.recreate(prof)
    out.print(
        f"{prof.deployer.file}: set to trial {rec.trial.number} ({rec.name}) {' '.join(flags)}"
    )
