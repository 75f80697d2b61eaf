"""Command line: thin wrappers over the library. A TunerError is one line and exit status 2."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import click
import optuna
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

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
from tuner.errors import TunerError
from tuner.study import (
    RunSettings,
    StudyPaths,
    StudyRunner,
    TrialOutcome,
    load_study,
    sigterm_as_interrupt,
)

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Bayesian auto-tuner for vLLM serving configurations.",
)
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True)  # one-line errors stay one line

SPACE = Path("search_spaces/seed_192.yaml")
SEEDS = Path("configs/strategic_12.yaml")
OBJECTIVE = Path("objectives/agent_multiturn.yaml")
PROFILE = Path("configs/profiles/tiny_cpu.yaml")
STUDIES = Path("studies")

SpaceOpt = Annotated[Path, typer.Option("--space", help="search space YAML")]
SeedsOpt = Annotated[Path, typer.Option("--seeds", help="seed configurations YAML")]
StudiesOpt = Annotated[Path, typer.Option("--studies-dir", help="where study folders live")]


# Column titles of metrics; dimensions are titled by the labels stored with the study.
SHORT = {
    "ttft_hit_ms": "HIT ms",
    "ttft_miss_ms": "MISS ms",
    "vram_mib": "VRAM MiB",
    "speedup": "MISS/HIT",
    "hit_rate_hit": "hit rate",
    "feasible": "meets criteria",
}


def _fmt(v: Any, unit: str = "", digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "–"
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        return f"{v:.{digits}f}{unit}"
    return f"{v}{unit}"


def _line(o: TrialOutcome) -> str:
    name = o.seed_name or f"trial_{o.number}"
    a = o.attrs
    if o.state == "complete":
        dup = f"  (= trial {o.duplicate_of}, not redeployed)" if o.duplicate_of is not None else ""
        return (
            f"#{o.number:<3} {name:<34} [green]ok[/]   HIT {_fmt(a.get('ttft_hit_ms'), ' ms')}  "
            f"MISS {_fmt(a.get('ttft_miss_ms'), ' ms')}  "
            f"VRAM {_fmt(a.get('vram_mib'), ' MiB', 0)}  "
            f"x{_fmt(a.get('speedup'), '', 2)}  hit-rate {_fmt(a.get('hit_rate_hit'), '', 2)}  "
            f"startup {_fmt(a.get('startup_s'), ' s')}{dup}"
        )
    colour = "yellow" if o.reason in ("invalid", "duplicate") else "red"
    return f"#{o.number:<3} {name:<34} [{colour}]{o.reason}[/]  {a.get('error', '')}"


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
    objective: Annotated[Path, typer.Option("--objective", help="objective YAML")] = OBJECTIVE,
    profile: Annotated[Path, typer.Option("--profile", help="deploy profile YAML")] = PROFILE,
    studies_dir: StudiesOpt = STUDIES,
    storage: Annotated[str | None, typer.Option("--storage", help="Optuna storage URL")] = None,
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
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", min=1, help="seconds for the whole study, validation included"),
    ] = None,
) -> None:
    """Create or resume a study, run trials until it holds TRIALS deployments, then validate."""
    sp = load_space(space)
    prof = load_profile(profile)
    deadline = time.monotonic() + timeout if timeout else None
    settings = RunSettings(
        n_trials=trials,
        sampler_seed=sampler_seed,
        enqueue_seeds=not no_seeds,
        precheck=not no_precheck,
        sampler=sampler,
        deadline=deadline,
    )
    paths = StudyPaths.create(study or f"{prof.name}-{sp.name}", studies_dir, storage)
    runner = _run(paths, sp, seeds, objective, prof, settings)
    if runner.reclaimed:
        out.print(f"cleaned up after an earlier run: {', '.join(runner.reclaimed)}")
    if not no_validate and not isinstance(prof.deployer, ExternalConfig):
        _validate(paths, sp, objective, prof, validate_top, validate_rounds, deadline)
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
) -> StudyRunner:
    """Run the study with a progress bar and one line per trial; the runner, for its result."""
    sd = load_seeds(seeds, sp) if settings.enqueue_seeds else ()
    obj = load_objective(objective)
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
            progress.console.print(_line(o))
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
    out.print(
        f"study {result.study_name}: {result.deployed} deployments{extra}, {result.new_trials} new "
        f"trials this run; storage {paths.storage_url}"
    )
    return runner


def _validate(
    paths: StudyPaths,
    sp: SearchSpace,
    objective: Path,
    prof: Profile,
    top: int,
    rounds: int,
    deadline: float | None,
) -> None:
    """Redeploy the top candidates and the baseline in interleaved rounds; print the verdict."""
    from tuner.report import recommend
    from tuner.report.synthesis import baseline_trial
    from tuner.study import ValidationSettings, Validator

    st = load_study(paths)
    rec = recommend(st, root=paths.root, use_validation=False)
    if rec is None:
        out.print("validation: no completed trial to validate")
        return
    candidates = [rec.trial, *rec.runners_up][:top]
    base = baseline_trial(st)
    if base is not None and base.number not in {c.number for c in candidates}:
        candidates.append(base)
    names = ", ".join(f"#{c.number}" for c in candidates)
    out.print(f"validation: {rounds} round(s) of {names} on held-out conversations")
    validator = Validator(
        paths=paths,
        space=sp,
        objective=load_objective(objective),
        profile=prof,
        candidates=candidates,
        settings=ValidationSettings(rounds=rounds, deadline=deadline),
        on_trial_end=lambda o: out.print(_line(o)),
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
    space: SpaceOpt = SPACE,
    objective: Annotated[Path, typer.Option("--objective", help="objective YAML")] = OBJECTIVE,
    profile: Annotated[Path, typer.Option("--profile", help="deploy profile YAML")] = PROFILE,
    studies_dir: StudiesOpt = STUDIES,
    storage: Annotated[str | None, typer.Option("--storage", help="Optuna storage URL")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", min=1)] = None,
) -> None:
    """Redeploy the top candidates and the baseline in interleaved rounds; resumable."""
    paths = StudyPaths.create(study, studies_dir, storage)
    load_study(paths)  # a clear error if it does not exist
    deadline = time.monotonic() + timeout if timeout else None
    with sigterm_as_interrupt():
        _validate(paths, load_space(space), objective, load_profile(profile), top, rounds, deadline)
    out.print(f"next: tuner report {paths.name}")


@app.command()
def sweep(
    study: Annotated[
        str | None, typer.Option("--study", help="study name (default: PROFILE-SPACE-sweep)")
    ] = None,
    space: SpaceOpt = SPACE,
    objective: Annotated[Path, typer.Option("--objective", help="objective YAML")] = OBJECTIVE,
    profile: Annotated[Path, typer.Option("--profile", help="deploy profile YAML")] = PROFILE,
    studies_dir: StudiesOpt = STUDIES,
    storage: Annotated[str | None, typer.Option("--storage", help="Optuna storage URL")] = None,
) -> None:
    """Evaluate every valid point of the space (Optuna GridSampler); resumable. Ground truth."""
    sp = load_space(space)
    prof = load_profile(profile)
    fixed = prof.server.to_args()
    valid = [p for p in sp.points() if not violations([*fixed, *sp.to_flags(p)])]
    out.print(f"{sp.name}: {len(valid)} valid points of {sp.size}")
    settings = RunSettings(
        n_trials=len(valid), enqueue_seeds=False, sampler="grid"
    )  # no validation
    paths = StudyPaths.create(study or f"{prof.name}-{sp.name}-sweep", studies_dir, storage)
    _run(paths, sp, SEEDS, objective, prof, settings)
    out.print(f"next: tuner report {paths.name}")


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
    out.print(
        f"{prof.deployer.file}: set to trial {rec.trial.number} ({rec.name}) {' '.join(flags)}"
    )


@app.command("space")
def space_cmd(file: Annotated[Path, typer.Argument(help="search space YAML")] = SPACE) -> None:
    """Print the dimensions of a search space and its number of points."""
    sp = load_space(file)
    table = Table(title=f"{sp.name}: {sp.size} points")
    for col in ("dimension", "values", "flags"):
        table.add_column(col)
    for d in sp.dimensions:
        flags = (
            f"env {d.env}"
            if d.env
            else (d.flag if d.negative_flag is None else f"{d.flag} / {d.negative_flag}")
        )
        table.add_row(
            d.name, ", ".join("null" if v is None else str(v).lower() for v in d.values), flags
        )
    out.print(table)
    out.print(f"{sp.size} points")


@app.command("seeds")
def seeds_cmd(
    file: Annotated[Path, typer.Argument(help="seeds YAML")] = SEEDS,
    space: SpaceOpt = SPACE,
    profile: Annotated[
        Path | None, typer.Option("--profile", help="check validity with this profile")
    ] = None,
) -> None:
    """List the seed configurations and the vLLM flags each one deploys."""
    sp = load_space(space)
    sd = load_seeds(file, sp)
    fixed = load_profile(profile).server.to_args() if profile else []
    table = Table(title=f"{len(sd)} seeds ({len({sp.key(s.params) for s in sd})} distinct points)")
    for col in ("#", "name", "flags", "valid"):
        table.add_column(col)
    for i, s in enumerate(sd, 1):
        flags = sp.to_flags(s.params)
        problems = violations([*fixed, *flags]) if profile else []
        table.add_row(str(i), s.name, " ".join(flags), "; ".join(problems) or "yes")
    out.print(table)


RuleOpt = Annotated[
    str,
    typer.Option(
        "--rule",
        help="recommendation rule: default | objective:NAME | weights:NAME=W,NAME=W",
    ),
]


def _front_table(title: str, st: optuna.Study, front: list[optuna.trial.FrozenTrial]) -> Table:
    from tuner.front import feasible
    from tuner.report.synthesis import dimension_titles

    table = Table(title=title)
    titles = dimension_titles(st)
    dims = list(titles)
    metrics = list(st.metric_names or [])
    cols = ["trial", "name", *dims, *metrics, "speedup", "hit_rate_hit", "feasible"]
    for c in cols:
        table.add_column(titles.get(c) or SHORT.get(c, c))
    for t in front:
        ok = feasible(t)
        row = [str(t.number), t.user_attrs.get("seed_name") or f"trial_{t.number}"]
        row += [
            f"{t.params[d]:g}" if isinstance(t.params.get(d), float) else _fmt(t.params.get(d))
            for d in dims
        ]
        row += [_fmt(v) for v in t.values]
        row += [
            _fmt(t.user_attrs.get("speedup"), digits=2),
            _fmt(t.user_attrs.get("hit_rate_hit"), digits=2),
        ]
        row.append("–" if ok is None else ("yes" if ok else "no"))
        table.add_row(*row)
    return table


@app.command()
def report(
    study: Annotated[str, typer.Argument(help="study name")],
    studies_dir: StudiesOpt = STUDIES,
    storage: Annotated[str | None, typer.Option("--storage")] = None,
    rule: RuleOpt = "default",
) -> None:
    """Write report.md, report.html, pareto.csv/json and trials.csv; print the recommendation."""
    from tuner.report import pareto_trials, parse_rule, recommend, write_report

    chosen = parse_rule(rule)
    paths = StudyPaths.create(study, studies_dir, storage)
    st = load_study(paths)
    front, feasible = pareto_trials(st)
    if not front:
        out.print("no completed trial yet")
    else:
        title = "Pareto front" + (
            "" if feasible else " (no trial meets the success criteria: all trials)"
        )
        out.print(_front_table(title, st, front))
    files = write_report(st, paths.root, chosen)
    rec = recommend(st, chosen, root=paths.root)
    if rec is not None:
        out.print(f"[bold]recommended:[/] {rec.name} (trial {rec.trial.number})")
        out.print(rec.explanation, markup=False, highlight=False)
        for n in rec.notes:
            out.print(f"[yellow]note:[/] {n}")
        out.print(rec.vllm_command, markup=False, highlight=False, soft_wrap=True)
    for p in files.values():
        out.print(f"wrote {p}")


@app.command()
def compare(
    study_a: Annotated[str, typer.Argument(help="first study")],
    study_b: Annotated[str, typer.Argument(help="second study")],
    studies_dir: StudiesOpt = STUDIES,
) -> None:
    """Show the Pareto fronts of two studies side by side (e.g. two models or two GPUs)."""
    from tuner.report.compare import write_compare

    studies = [load_study(StudyPaths.create(n, studies_dir, None)) for n in (study_a, study_b)]
    fronts = write_compare(studies, studies_dir)
    grid = Table.grid(padding=2)
    grid.add_row(
        *(_front_table(st.study_name, st, f) for st, f in zip(studies, fronts[0], strict=True))
    )
    out.print(grid)
    for p in fronts[1].values():
        out.print(f"wrote {p}")


@app.command()
def dashboard(
    study: Annotated[
        str | None, typer.Argument(help="study name (all studies of its storage)")
    ] = None,
    studies_dir: StudiesOpt = STUDIES,
    storage: Annotated[str | None, typer.Option("--storage")] = None,
    host: Annotated[str, typer.Option("--host", help="bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8080,
) -> None:
    """Serve optuna-dashboard on the study's storage (trial attributes included) until Ctrl-C."""
    import optuna_dashboard

    if study is None and storage is None:
        raise TunerError("name a study (or give --storage URL)")
    url = storage or StudyPaths.create(study or "", studies_dir, None).storage_url
    if study is not None:
        load_study(StudyPaths.create(study, studies_dir, storage))  # a clear error if missing
    out.print(f"optuna-dashboard on http://{host}:{port}/  storage {url}  (Ctrl-C stops it)")
    optuna_dashboard.run_server(url, host=host, port=port)


@app.command("export-surface")
def export_surface_cmd(
    study: Annotated[str, typer.Argument(help="study name")],
    output: Annotated[
        Path | None, typer.Option("--out", help="default: STUDY/surface.json")
    ] = None,
    description: Annotated[str, typer.Option("--description", help="how it was made")] = "",
    studies_dir: StudiesOpt = STUDIES,
    storage: Annotated[str | None, typer.Option("--storage")] = None,
) -> None:
    """Write a study's raw measurements as a surface the replay deployer can serve."""
    import json

    from tuner.report.surface import export_surface

    paths = StudyPaths.create(study, studies_dir, storage)
    surface = export_surface(load_study(paths), paths.root, description)
    target = output or paths.root / "surface.json"
    target.write_text(json.dumps(surface.to_json(), indent=1))
    ok = sum(p.status == "ok" for p in surface.points)
    out.print(f"wrote {target}: {ok} measured and {len(surface.points) - ok} failed configurations")


@app.command()
def cleanup(
    study: Annotated[
        str | None, typer.Option("--study", help="only this study's containers")
    ] = None,
) -> None:
    """Remove every container the tuner started (labelled io.vllm-tuner.managed), and only those."""
    from tuner.deploy.docker import docker_client, remove_containers

    removed = remove_containers(docker_client(), study)
    out.print(
        f"removed {len(removed)} container(s)" + (f": {', '.join(removed)}" if removed else "")
    )


@app.command()
def restore(file: Annotated[Path, typer.Argument(help="the compose file a study rewrote")]) -> None:
    """Put a compose file back byte-for-byte from the backup the compose deployer made."""
    from tuner.deploy.compose_file import backup_path
    from tuner.deploy.compose_file import restore as restore_file

    if not restore_file(file):
        raise TunerError(f"{file}: no backup {backup_path(file).name}: nothing to restore")
    out.print(f"{file} restored")


@app.command("demo-model")
def demo_model(
    path: Annotated[Path, typer.Argument(help="output folder")] = Path("studies/models/tiny-llama"),
) -> None:
    """Build the tiny random-weight Llama the quick start and tests serve (needs vLLM installed)."""
    from tuner.demo_model import build_tiny_model

    build_tiny_model(path)
    out.print(f"model ready in {path}")


def main() -> None:
    """Entry point of the ``tuner`` command."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        # Typer turns KeyboardInterrupt into a returned 130 when not in standalone mode.
        rv = app(standalone_mode=False)
        if rv == 130:
            raise KeyboardInterrupt
        sys.exit(rv if isinstance(rv, int) else 0)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        err.print(
            "interrupted: the server was stopped; finished trials are kept and the study resumes "
            "with the same command"
        )
        sys.exit(130)
    except TunerError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        sys.exit(2)
    except OSError as exc:
        # e.g. a full disk: one line, nothing lost (trials are committed as they finish)
        err.print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), markup=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
