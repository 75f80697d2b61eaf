"""What every command shares: the typer app, the consoles, default paths, one-line output."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from tuner.config import Profile
from tuner.errors import ConfigError, Reason
from tuner.study import Settle, TrialOutcome

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Bayesian auto-tuner for vLLM serving configurations.",
)
# A terminal's own width; piped output is not cut to 80 columns.
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
ObjectiveOpt = Annotated[
    Path | None,
    typer.Option("--objective", help="objective YAML (default: the profile's, else ours)"),
]
ProfileOpt = Annotated[Path, typer.Option("--profile", help="deploy profile YAML")]
StorageOpt = Annotated[str | None, typer.Option("--storage", help="Optuna storage URL")]
HeartbeatOpt = Annotated[
    int, typer.Option("--heartbeat", min=1, help="seconds between a running trial's heartbeats")
]
GraceOpt = Annotated[
    int,
    typer.Option("--grace", min=1, help="seconds without a heartbeat before a trial is retried"),
]
ArtifactsOpt = Annotated[
    str | None,
    typer.Option(
        "--artifacts", help="the trials' files: a folder, or s3://BUCKET (default STUDY/artifacts)"
    ),
]
SettleAfterOpt = Annotated[
    int,
    typer.Option(
        "--settle-after",
        min=0,
        help="end the search early once the last K deployments (8 is a start) added under "
        "--settle-share of the front's hypervolume and every value was tried; it can cost "
        "the pick quality (docs/measurement.md) [default: 0, always --trials]",
    ),
]
SettleShareOpt = Annotated[float, typer.Option("--settle-share", min=0.0, max=1.0)]
EarlyStopOpt = Annotated[
    bool,
    typer.Option(
        "--early-stop/--no-early-stop",
        help="stop measuring a search trial already behind the front beyond the noise",
    ),
]
GpusOpt = Annotated[
    str | None, typer.Option("--gpus", help="GPU ids to use, e.g. 0,1,2,3 (split among workers)")
]


def settle(after: int, share: float) -> Settle | None:
    """The search's settle rule from the two options; None: off."""
    return Settle(after, share) if after > 0 else None


def parse_gpus(text: str | None) -> list[str] | None:
    """``0,1,2`` as ids; None when not given. ConfigError for an empty or repeated id."""
    if text is None:
        return None
    ids = [g.strip() for g in text.split(",")]
    if not all(ids) or len(set(ids)) != len(ids):
        raise ConfigError(f"--gpus {text!r}: give distinct ids separated by commas, e.g. 0,1")
    return ids


def objective_path(given: Path | None, prof: Profile) -> Path:
    """--objective, else the profile's own objective file, else the default one."""
    return given or prof.objective or OBJECTIVE


# Column titles of metrics; dimensions are titled by the labels stored with the study.
SHORT = {
    "ttft_hit_ms": "HIT ms",
    "ttft_miss_ms": "MISS ms",
    "vram_mib": "VRAM MiB",
    "speedup": "MISS/HIT",
    "hit_rate_hit": "hit rate",
    "feasible": "meets criteria",
}


def fmt_value(v: Any, unit: str = "", digits: int = 1) -> str:
    """A value as a terminal table shows it: on/off for booleans, ``digits`` decimals for
    floats, '–' for none."""
    if v is None or (isinstance(v, float) and v != v):
        return "–"
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        return f"{v:.{digits}f}{unit}"
    return f"{v}{unit}"


def _repeats(a: dict[str, Any]) -> str:
    """A note when the measured conversations cycled over fewer distinct ones (a trace)."""
    convs, distinct = a.get("conversations"), a.get("distinct_conversations")
    if isinstance(convs, int) and isinstance(distinct, int) and convs > distinct:
        return f"  [yellow]({convs} conversations, {distinct} distinct)[/]"
    return ""


def _answers(a: dict[str, Any]) -> str:
    """The answer guard's verdict, when it compared: same answers, or how many changed."""
    same, changed = a.get("answers_same"), a.get("answers_changed")
    if not isinstance(same, int | float) or math.isnan(same):
        return ""
    if not changed and a.get("tools_same") in (None, 1.0):
        return "  answers same"
    return f"  [yellow]answers changed {changed} ({same:.0%} tokens)[/]"


def trial_line(o: TrialOutcome) -> str:
    """One trial's line as ``optimize`` prints it: its measurements when complete, else its
    reason, coloured by what it means (red only for a configuration's failure)."""
    name = o.seed_name or f"trial_{o.number}"
    a = o.attrs
    if o.state == "complete":
        dup = f"  (= trial {o.duplicate_of}, not redeployed)" if o.duplicate_of is not None else ""
        return (
            f"#{o.number:<3} {name:<34} [green]ok[/]   "
            f"HIT {fmt_value(a.get('ttft_hit_ms'), ' ms')}  "
            f"MISS {fmt_value(a.get('ttft_miss_ms'), ' ms')}  "
            f"VRAM {fmt_value(a.get('vram_mib'), ' MiB', 0)}  "
            f"x{fmt_value(a.get('speedup'), '', 2)}  "
            f"hit-rate {fmt_value(a.get('hit_rate_hit'), '', 2)}  "
            f"startup {fmt_value(a.get('startup_s'), ' s')}{_answers(a)}{dup}{_repeats(a)}"
        )
    # Red is for what failed: an invalid point is refused in milliseconds (yellow), and what
    # says nothing of its point (interrupted, the machine's fault, a duplicate) is no failure.
    reason = Reason.of(o.reason)
    colour = "dim" if reason is None or not reason.is_failure else "red"
    colour = "yellow" if reason == Reason.INVALID else colour
    return f"#{o.number:<3} {name:<34} [{colour}]{o.reason}[/]  {escape(str(a.get('error', '')))}"
