"""``tuner space`` and ``tuner seeds``: look at a search space and the seeds before running."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tuner.cli._common import (
    SEEDS,
    SPACE,
    SpaceOpt,
    app,
    out,
)
from tuner.config import (
    load_profile,
    load_seeds,
    load_space,
    violations,
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
        if d.into:
            flags = f"{d.json_key} in {sp.dimension(d.into).flag}"
        elif d.json_key:
            flags = f"{d.flag} {{{d.json_key}: ...}}"
        when = " and ".join(f"{k} in {[_show(v) for v in vs]}" for k, vs in d.when)
        values = ", ".join(_show(v) for v in d.values)
        table.add_row(d.name, values + (f" (only when {when})" if when else ""), flags)
    out.print(table)
    out.print(f"{sp.size} points")


def _show(v: object) -> str:
    """A value as the space file writes it."""
    return "null" if v is None else str(v).lower()


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
