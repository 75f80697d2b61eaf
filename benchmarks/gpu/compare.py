"""The same configurations in two GPU studies side by side, with each trial's 95 % intervals.

Usage: python benchmarks/gpu/compare.py benchmarks/results/gpu/h100c1 benchmarks/results/gpu/h100c8
Prints a markdown table: per configuration present in both studies, HIT, MISS and ITL p90 (median
or p90 [95 % bootstrap interval]) in each, and each one's ratio to the baseline of its own study.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import optuna

STATS = ("ttft_hit_ms", "ttft_miss_ms", "itl_p90_ms")


def by_name(root: Path) -> dict[str, dict[str, Any]]:
    study = optuna.load_study(study_name=root.name, storage=f"sqlite:///{root / 'study.db'}")
    rows: dict[str, dict[str, Any]] = {}
    for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        a = t.user_attrs
        if "duplicate_of" not in a and "seed_name" in a:
            rows.setdefault(a["seed_name"], a)  # the first deployment of each seed
    return rows


def cell(a: dict[str, Any], stat: str, base: dict[str, Any]) -> str:
    lo, hi = a.get(f"ci_{stat}") or (float("nan"), float("nan"))
    return f"{a[stat]:.1f} [{lo:.0f}-{hi:.0f}] x{a[stat] / base[stat]:.2f}"


def main() -> None:
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    a_root, b_root = Path(sys.argv[1]), Path(sys.argv[2])
    a, b = by_name(a_root), by_name(b_root)
    base = "baseline_reference"
    head = [f"{s} {r.name}" for s in ("HIT", "MISS", "ITL p90") for r in (a_root, b_root)]
    print("| config | " + " | ".join(head) + " |")
    print("|---|" + "---|" * len(head))
    for name in [n for n in a if n in b]:
        cells = [cell(x[name], s, x[base]) for s in STATS for x in (a, b)]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
