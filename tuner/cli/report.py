"""``tuner report``, ``compare``, ``dashboard`` and ``export-surface``: read studies back."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import optuna
import typer
from rich.table import Table

from tuner.cli._common import (
    SHORT,
    STUDIES,
    StudiesOpt,
    app,
    fmt_value,
    out,
)
from tuner.errors import TunerError
from tuner.study import (
    StudyPaths,
    journal_problem,
    load_study,
)
from tuner.study.artifacts import fetch_missing, open_store, store_of

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
            f"{t.params[d]:g}" if isinstance(t.params.get(d), float) else fmt_value(t.params.get(d))
            for d in dims
        ]
        row += [fmt_value(v) for v in t.values]
        row += [
            fmt_value(t.user_attrs.get("speedup"), digits=2),
            fmt_value(t.user_attrs.get("hit_rate_hit"), digits=2),
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
    _fetch(st, paths)
    problem = journal_problem(paths.storage_url)
    if problem:  # read anyway, but never in silence
        out.print(f"[yellow]warning: {problem}; reporting what is complete[/yellow]")
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
    store = None
    if study is not None:
        # A clear error if it is missing; its artifact store lists the trials' files.
        where = store_of(load_study(StudyPaths.create(study, studies_dir, storage)))
        store = open_store(where) if where else None
    out.print(f"optuna-dashboard on http://{host}:{port}/  storage {url}  (Ctrl-C stops it)")
    optuna_dashboard.run_server(url, host=host, port=port, artifact_store=store)


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
    st = load_study(paths)
    _fetch(st, paths)
    surface = export_surface(st, paths.root, description)
    target = output or paths.root / "surface.json"
    target.write_text(json.dumps(surface.to_json(), indent=1))
    ok = sum(p.status == "ok" for p in surface.points)
    out.print(f"wrote {target}: {ok} measured and {len(surface.points) - ok} failed configurations")


def _fetch(st: optuna.Study, paths: StudyPaths) -> None:
    """Trials run on other hosts: their files from the artifact store, into this study folder."""
    n = fetch_missing(st, paths.root)
    if n:
        out.print(f"fetched {n} files of trials run on other hosts from {store_of(st)}")
