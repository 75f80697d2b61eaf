"""What a report shows, computed once from the study (``Report``), and its tables.

``report.md`` and ``report.html`` (``tuner.report.documents``) render the same ``Report``; the
tables here are shared by both (markdown through ``md_table``, HTML through pandas).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial

from tuner.decide import Effect, effects
from tuner.front import measured_trials
from tuner.report.headline import Line, headline
from tuner.report.pareto import pareto_trials
from tuner.report.recommend import Recommendation, Rule, recommend
from tuner.report.synthesis import (
    FailureGroup,
    dimension_titles,
    failures_by_reason,
    name_of,
    quality_warnings,
    synthesis_frame,
)
from tuner.trial import StudyAttr

__all__ = [
    "Report",
    "build_report",
    "cell",
    "effects_frame",
    "front_frame",
    "md_table",
    "reading",
    "validation_frame",
]


@dataclass(frozen=True, slots=True)
class Report:
    """Everything report.md and report.html show, computed once from the study."""

    study: optuna.Study
    table: pd.DataFrame
    front: list[FrozenTrial]
    front_feasible: bool
    recommendation: Recommendation | None
    failures: list[FailureGroup]
    warnings: list[tuple[int, str]]
    effects: list[Effect]
    headline: list[Line]


def build_report(study: optuna.Study, rule: Rule | None = None, root: Path | None = None) -> Report:
    """Read ``study`` back into a Report: synthesis table, front, pick, failures, warnings."""
    front, feasible = pareto_trials(study)
    rec = recommend(study, rule, root=root)
    return Report(
        study=study,
        table=synthesis_frame(study),
        front=front,
        front_feasible=feasible,
        recommendation=rec,
        failures=failures_by_reason(study),
        warnings=quality_warnings(study, front),
        effects=effects(study, measured_trials(study)),
        headline=headline(study, rec, root),
    )


def cell(v: Any, column: str = "") -> str:
    """A table cell: on/off for flags, yes/no for a verdict, two decimals below 10, '–' for
    none."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, bool):
        # a flag's value reads on/off; a verdict (meets_criteria) reads yes/no
        yes, no = ("yes", "no") if column == "meets_criteria" else ("on", "off")
        return yes if v else no
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def md_table(df: pd.DataFrame) -> str:
    """A GitHub markdown table (no tabulate dependency)."""
    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    sep = "|" + "---|" * len(df.columns)
    cols = [str(c) for c in df.columns]
    rows = [
        "| " + " | ".join(cell(v, c) for v, c in zip(r, cols, strict=True)) + " |"
        for r in df.itertuples(index=False)
    ]
    return "\n".join([head, sep, *rows])


def front_frame(rep: Report) -> pd.DataFrame:
    """The Pareto front as a table: configuration, dimensions, objectives, speed-up, hit rate
    and the criteria's verdict."""
    tbl = rep.table.set_index("trial")
    nums = [t.number for t in rep.front if t.number in tbl.index]
    dims = list(dimension_titles(rep.study).values())
    metrics = [m for m in rep.study.metric_names or [] if m in tbl.columns]
    extra = [c for c in ("speedup", "hit_rate", "meets_criteria") if c not in metrics]
    return tbl.loc[nums].reset_index()[["trial", "config", *dims, *metrics, *extra]]


def reading(e: Effect) -> str:
    """An effect in words: lower or higher when its interval excludes 0, "too few trials
    (n / m)" when no interval can be computed (one trial on a side), else no measurable
    effect."""
    if e.measurable:
        return "lower" if e.delta < 0 else "higher"
    if math.isnan(e.interval[0]):
        return f"too few trials ({e.n} / {e.n_rest})"
    return "no measurable effect"


def effects_frame(rep: Report, measurable: bool | None = None) -> pd.DataFrame:
    """What mattered: one row per dimension value and objective, measurable effects first
    (``measurable``: only those, or only the rest). An interval that cannot be computed (one
    trial on a side) reads "too few trials", never "no measurable effect"."""
    units = rep.study.user_attrs.get(StudyAttr.UNITS, {})
    rows = []
    for e in sorted(rep.effects, key=lambda e: (not e.measurable, -abs(e.delta))):
        if measurable is not None and e.measurable != measurable:
            continue
        lo, hi = e.interval
        unit = units.get(e.metric, "")
        rows.append(
            {
                "dimension": e.dimension,
                "value": e.value,
                "objective": e.metric,
                "effect": f"{e.delta:+.1f} {unit}".strip(),
                "95 % interval": "–" if lo != lo else f"[{lo:+.1f}, {hi:+.1f}]",
                "trials (value / others)": f"{e.n} / {e.n_rest}",
                "reading": reading(e),
            }
        )
    return pd.DataFrame(rows)


def validation_frame(rep: Report) -> pd.DataFrame:
    """Search values beside validation values, per candidate."""
    rec = rep.recommendation
    v = rec.validation if rec else None
    if v is None:
        return pd.DataFrame()
    rows = []
    for r in v.results:
        c = r.candidate
        lo_hi = v.diffs.get(c.number)
        rows.append(
            {
                "trial": c.number,
                "config": name_of(c),
                "search HIT ms": c.user_attrs.get("ttft_hit_ms"),
                "validation HIT ms": r.value,
                "per deployment": ", ".join(f"{x:.1f}" for x in r.per_deployment) or "–",
                "vs fastest": "–" if lo_hi is None else f"[{lo_hi[0]:+.1f}, {lo_hi[1]:+.1f}]",
                "failed": ", ".join(r.failed) or "–",
                "role": "baseline" if r.is_baseline else (
                    "pick" if v.pick and v.pick.candidate.number == c.number
                    else ("in group" if c.number in v.group else "")
                ),
            }
        )  # fmt: skip
    return pd.DataFrame(rows)
