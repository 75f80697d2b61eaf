"""``tuner cleanup``, ``restore`` and ``demo-model``: housekeeping after hard kills, demo model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tuner.cli._common import (
    app,
    out,
)
from tuner.errors import TunerError


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
