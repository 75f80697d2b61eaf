"""``tuner cleanup``, ``restore`` and ``demo-model``: housekeeping after hard kills, demo model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tuner.cli._common import STUDIES, StudiesOpt, app, out
from tuner.errors import TunerError


@app.command()
def cleanup(
    study: Annotated[
        str | None, typer.Option("--study", help="only this study's servers and containers")
    ] = None,
    studies_dir: StudiesOpt = STUDIES,
    profile: Annotated[
        Path | None,
        typer.Option("--profile", help="the study's profile: its Docker Engine (docker_host)"),
    ] = None,
) -> None:
    """Stop what hard-killed runs left: local servers recorded in the study folders (after
    checking each is still the recorded process) and labelled containers, and only those."""
    from tuner.config import load_profile
    from tuner.deploy import reclaim
    from tuner.study.workers import live_workers

    roots = (
        [studies_dir / study] if study else sorted(p for p in studies_dir.glob("*") if p.is_dir())
    )
    running = [f"{w} ({root.name})" for root in roots if root.is_dir() for w in live_workers(root)]
    if running:  # their servers are theirs: a worker stops its own
        raise TunerError(f"workers are running: {', '.join(running)}; stop them first")
    prof = load_profile(profile) if profile is not None else None
    for line in reclaim([r for r in roots if r.is_dir()], study, prof):
        out.print(line)


@app.command()
def restore(file: Annotated[Path, typer.Argument(help="the compose file a study rewrote")]) -> None:
    """Put a compose file back byte-for-byte and its service as it was before the study."""
    from tuner.deploy.compose import hand_back_file
    from tuner.deploy.compose_file import backup_path

    done = hand_back_file(file)
    if not done:
        raise TunerError(f"{file}: no backup {backup_path(file).name}: nothing to restore")
    for line in done:
        out.print(line)


@app.command("demo-model")
def demo_model(
    path: Annotated[Path, typer.Argument(help="output folder")] = Path("studies/models/tiny-llama"),
) -> None:
    """Build the tiny random-weight Llama the quick start and tests serve (needs vLLM installed)."""
    from tuner.demo_model import build_tiny_model

    build_tiny_model(path)
    out.print(f"model ready in {path}")
