"""Running a study in the terminal: a progress bar and one line per trial, or plain prefixed
lines for a worker beside others. Shared by ``optimize``, ``sweep`` and ``worker``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tuner.cli._common import out, trial_line
from tuner.config import Profile, SearchSpace, load_objective, load_seeds
from tuner.study import RunResult, RunSettings, Stop, StudyPaths, StudyRunner, TrialOutcome

__all__ = ["run_study"]


def run_study(
    paths: StudyPaths,
    sp: SearchSpace,
    seeds: Path,
    objective: Path,
    prof: Profile,
    settings: RunSettings,
    *,
    plain: str | None = None,
) -> RunResult:
    """Run the study with a progress bar and one line per trial; its result. ``plain``: no
    progress bar, each line prefixed with it (a worker beside others)."""
    sd = tuple(load_seeds(seeds, sp)) if settings.enqueue_seeds else ()
    obj = load_objective(objective)

    def runner(**callbacks: Any) -> StudyRunner:
        return StudyRunner(paths=paths, space=sp, seeds=sd, objective=obj, profile=prof,
                           settings=settings, **callbacks)  # fmt: skip

    if plain is not None:
        prefix = escape(plain)
        result = runner(on_trial_end=lambda o: out.print(f"{prefix} {trial_line(o)}")).run()
        out.print(f"{prefix} done: {len(result.outcomes)} trials; the study holds "
                  f"{result.deployed} deployments")  # fmt: skip
        return result
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

        run = runner(on_trial_start=started, on_trial_end=ended)
        result = run.run()
    for w in run.warmed:
        out.print(f"warm start from {w.words()}")
    if run.reclaimed:
        out.print(f"cleaned up after an earlier run: {', '.join(run.reclaimed)}")
    if result.stop == Stop.GOAL:
        out.print(f"search stopped early (--stop-when-met): trial {result.goal_met} meets the "
                  "success criteria with intervals within the objectives' precision")  # fmt: skip
    if result.stop == Stop.SETTLED:
        out.print(f"search ended before --trials: {result.settled} (--settle-after 0 runs on)")
    extra = " (every valid point evaluated)" if result.stop == Stop.EXHAUSTED else ""
    out.print(
        f"study {result.study_name}: {result.deployed} deployments{extra}, {result.new_trials} new "
        f"trials this run; storage {paths.storage_url}"
    )
    return result
