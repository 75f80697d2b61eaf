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


def _natural_width(table: Table) -> int:
    """How wide ``table`` is with nothing cut (rich measures within the terminal otherwise)."""
    return out.measure(table, options=out.options.update_width(100_000)).maximum


# Columns a narrow terminal gives up first, in order: a front table must never be squeezed
# into cells cut to "na…".
_OPTIONAL = ("hit_rate_hit", "speedup", "feasible", "name")


def _front_table(
    title: str, st: optuna.Study, front: list[optuna.trial.FrozenTrial], width: int | None = None
) -> Table:
    """The front as a table; with ``width``, without the optional columns it cannot hold."""
    from tuner.front import feasible
    from tuner.report.synthesis import dimension_titles, name_of

    titles = dimension_titles(st)
    dims, metrics = list(titles), list(st.metric_names or [])
    drop: list[str] = []
    while True:
        cols = [c for c in ["trial", "name", *dims, *metrics, "speedup", "hit_rate_hit",
                            "feasible"] if c not in drop]  # fmt: skip
        table = Table(title=title)
        for c in cols:
            table.add_column(titles.get(c) or SHORT.get(c, c))
        for t in front:
            ok = feasible(t)
            cells = {
                "trial": str(t.number),
                "name": name_of(t),
                "speedup": fmt_value(t.user_attrs.get("speedup"), digits=2),
                "hit_rate_hit": fmt_value(t.user_attrs.get("hit_rate_hit"), digits=2),
                "feasible": "–" if ok is None else ("yes" if ok else "no"),
            }
            for d in dims:
                v = t.params.get(d)
                cells[d] = f"{v:g}" if isinstance(v, float) else fmt_value(v)
            for m, v in zip(metrics, t.values, strict=False):
                cells[m] = fmt_value(v)
            table.add_row(*(cells.get(c, "–") for c in cols))
        fits = width is None or _natural_width(table) <= width
        more = [c for c in _OPTIONAL if c not in drop]
        if fits or not more:
            return table
        drop.append(more[0])


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
        out.print(_front_table(title, st, front, width=out.width))
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
    fronts, files = write_compare(studies, studies_dir)
    tables = [_front_table(st.study_name, st, f) for st, f in zip(studies, fronts, strict=True)]
    grid = Table.grid(padding=2)
    grid.add_row(*tables)
    if _natural_width(grid) <= out.width:
        out.print(grid)  # side by side when both fit whole
    else:  # stacked, each keeping the columns that fit
        for st, f in zip(studies, fronts, strict=True):
            out.print(_front_table(st.study_name, st, f, width=out.width))
    for p in files.values():
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
