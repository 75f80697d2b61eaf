"""report.md and a self-contained report.html (plotly.js inlined: opens offline)."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import plotly.graph_objects as go
from optuna.trial import FrozenTrial

from tuner.decide import Effect, effects
from tuner.front import measured_trials
from tuner.report.figures import figures
from tuner.report.pareto import pareto_trials, write_pareto
from tuner.report.recommend import Recommendation, Rule, recommend
from tuner.report.synthesis import (
    FailureGroup,
    baseline_trial,
    dimension_titles,
    failures_by_reason,
    name_of,
    quality_warnings,
    synthesis_frame,
)

__all__ = ["Report", "build_report", "md_table", "write_report"]


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


def build_report(study: optuna.Study, rule: Rule | None = None, root: Path | None = None) -> Report:
    """Read ``study`` back into a Report: synthesis table, front, pick, failures, warnings."""
    front, feasible = pareto_trials(study)
    return Report(
        study=study,
        table=synthesis_frame(study),
        front=front,
        front_feasible=feasible,
        recommendation=recommend(study, rule, root=root),
        failures=failures_by_reason(study),
        warnings=quality_warnings(study, front),
        effects=effects(study, measured_trials(study)),
    )


def _cell(v: Any, column: str = "") -> str:
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
        "| " + " | ".join(_cell(v, c) for v, c in zip(r, cols, strict=True)) + " |"
        for r in df.itertuples(index=False)
    ]
    return "\n".join([head, sep, *rows])


def _criteria_lines(rep: Report) -> list[str]:
    crit = rep.study.user_attrs.get("criteria")
    if not crit:
        return ["No success criteria in the objective file."]
    base = baseline_trial(rep.study)
    lines = [
        f"Baseline: `{crit['baseline']}`"
        + (
            f" (trial {base.number}: MISS {base.user_attrs['ttft_miss_ms']:.1f} ms, "
            f"HIT {base.user_attrs['ttft_hit_ms']:.1f} ms)"
            if base
            else " (not measured yet: no trial can be judged)"
        ),
        f"- TTFT MISS <= {crit['miss_max_ratio']:g} x baseline MISS",
        f"- TTFT HIT <= {crit['hit_max_ratio']:g} x baseline HIT",
        f"- MISS/HIT speed-up >= {crit['min_speedup']:g}",
    ]
    meets = rep.table[rep.table["meets_criteria"] == True]  # noqa: E712 (pandas mask)
    names = ", ".join(f"{c} (#{t})" for c, t in zip(meets["config"], meets["trial"], strict=True))
    lines.append(f"\nTrials meeting all criteria ({len(meets)}): {names or 'none'}")
    met = rep.study.user_attrs.get("goal_met")
    if isinstance(met, dict):
        lines.append(
            f"The search stopped early (--stop-when-met) at {met.get('deployments')} "
            f"deployments: trial {met.get('trial')} meets every criterion with intervals "
            "within the objectives' precision."
        )
    return lines


def _front_frame(rep: Report) -> pd.DataFrame:
    tbl = rep.table.set_index("trial")
    nums = [t.number for t in rep.front if t.number in tbl.index]
    dims = list(dimension_titles(rep.study).values())
    metrics = [m for m in rep.study.metric_names or [] if m in tbl.columns]
    extra = [c for c in ("speedup", "hit_rate", "meets_criteria") if c not in metrics]
    return tbl.loc[nums].reset_index()[["trial", "config", *dims, *metrics, *extra]]


def _rec_lines(rec: Recommendation | None) -> list[str]:
    if rec is None:
        return ["No completed trial: nothing to recommend yet."]
    lines = [f"**{rec.name}** (trial {rec.trial.number})", "", rec.explanation, ""]
    lines += [f"> Note: {n}" for n in rec.notes]
    lines += [
        "vLLM command line:",
        "```bash",
        rec.vllm_command,
        "```",
        "docker compose (`command:` of your vLLM service):",
        "```yaml",
        rec.compose_snippet,
        "```",
        "docker run:",
        "```bash",
        rec.docker_run,
        "```",
    ]
    return lines


def effects_frame(rep: Report) -> pd.DataFrame:
    """What mattered: one row per dimension value and objective, measurable effects first."""
    units = rep.study.user_attrs.get("units", {})
    rows = []
    for e in sorted(rep.effects, key=lambda e: (not e.measurable, -abs(e.delta))):
        lo, hi = e.interval
        unit = units.get(e.metric, "")
        verdict = (
            "no measurable effect" if not e.measurable else ("lower" if e.delta < 0 else "higher")
        )
        rows.append(
            {
                "dimension": e.dimension,
                "value": e.value,
                "objective": e.metric,
                "effect": f"{e.delta:+.1f} {unit}".strip(),
                "95 % interval": "–" if lo != lo else f"[{lo:+.1f}, {hi:+.1f}]",
                "trials (value / others)": f"{e.n} / {e.n_rest}",
                "reading": verdict,
            }
        )
    return pd.DataFrame(rows)


def _group_lines(rep: Report) -> list[str]:
    rec = rep.recommendation
    if rec is None or rec.group is None:
        return []
    g = rec.group
    lines = [f"Best group on {g.metric} (within noise of trial {g.best.number}): "
             + ", ".join(str(n) for n in g.numbers)]  # fmt: skip
    for n, (lo, hi) in sorted(g.diffs.items()):
        where = "in the group" if n in g.numbers else "outside"
        lines.append(f"- trial {n}: difference to the fastest [{lo:+.1f}, {hi:+.1f}] ({where})")
    return lines


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


def _soak_lines(rep: Report) -> list[str]:
    """The soak of the pick (``tuner soak``), when one was run: drift and every window."""
    soak = rep.study.user_attrs.get("soak")
    if not soak:
        return []
    rows = [
        f"| {w['index']} | {w['started_s']:.0f} | {w['requests']} | {w['ttft_hit_ms']:.1f} | "
        f"{w['ttft_miss_ms']:.1f} | {w['itl_p90_ms']:.1f} | {w['failed_requests']} |"
        for w in soak["windows"]
    ]
    return [
        "## Soak",
        "",
        f"Trial {soak['trial']} kept under the workload: {soak['verdict']}.",
        "",
        "| window | at s | requests | HIT ms | MISS ms | ITL p90 ms | failed |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def _validation_lines(rep: Report) -> list[str]:
    rec = rep.recommendation
    if rec is None or rec.validation is None:
        return ["Not validated: run `tuner validate STUDY` (redeploys the top candidates and "
                "the baseline in interleaved rounds on held-out conversations)."]  # fmt: skip
    return [rec.validation.words(), "", md_table(validation_frame(rep))]


def render_markdown(rep: Report) -> str:
    """report.md: recommendation, criteria, front, all trials, quality, failures."""
    st = rep.study
    n_done = len(rep.table)
    parts = [
        f"# Study `{st.study_name}`",
        "",
        f"Objectives: {', '.join(st.metric_names or [])} (all minimised). "
        f"{n_done} finished trials; {sum(len(g.trials) for g in rep.failures)} failed.",
        "",
        "## Recommendation",
        "",
        *_rec_lines(rep.recommendation),
        "",
        "## Validation",
        "",
        *_validation_lines(rep),
        "",
        *_soak_lines(rep),
        "## Success criteria",
        "",
        *_criteria_lines(rep),
        "",
        "## Pareto front" + ("" if rep.front_feasible else " (no feasible trial: all trials)"),
        "",
        md_table(_front_frame(rep)) if rep.front else "No completed trial.",
        "",
        *_group_lines(rep),
        "",
        "## What mattered",
        "",
        "Each dimension value against the others, from the study's measured trials: the "
        "difference of mean objective values and its 95 % bootstrap interval (an interval that "
        "contains 0 is no measurable effect). PED-ANOVA importances are in report.html.",
        "",
        md_table(effects_frame(rep)) if rep.effects else "Too few measured trials.",
        "",
        "## All trials (mission format; deltas vs the baseline)",
        "",
        md_table(rep.table),
        "",
        "## Measurement quality",
        "",
    ]
    parts += [f"- trial {n}: {w}" for n, w in rep.warnings] or ["No warning."]
    parts += ["", "## Failed trials by reason", ""]
    if not rep.failures:
        parts.append("No failed deployment.")
    for g in rep.failures:
        ids = ", ".join(str(t.number) for t in g.trials)
        parts += [f"### {g.reason} ({len(g.trials)}): trials {ids}", ""]
        parts.append(f"- {g.trials[0].user_attrs.get('error', '')}")
        tail = g.example_tail()
        if tail:
            parts += ["", "```", tail, "```"]
        parts.append("")
    parts += ["", "Plots: see report.html next to this file."]
    return "\n".join(parts) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1500px}
table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
pre{background:#f5f5f5;padding:8px;white-space:pre-wrap}.warn{color:#a15c00}"""


def _df_html(df: pd.DataFrame) -> str:
    cells = pd.DataFrame({c: [_cell(v, str(c)) for v in df[c]] for c in df.columns})
    return cells.to_html(index=False, border=0, escape=True)


def render_html(rep: Report) -> str:
    """report.html: the markdown's content plus plots, self-contained (plotly.js inlined)."""
    st = rep.study
    esc = html.escape
    body = [f"<h1>Study {esc(st.study_name)}</h1>"]
    rec = rep.recommendation
    body.append("<h2>Recommendation</h2>")
    if rec is None:
        body.append("<p>No completed trial.</p>")
    else:
        body.append(f"<p><b>{esc(rec.name)}</b> (trial {rec.trial.number})</p>")
        body.append(f"<p>{esc(rec.explanation)}</p>")
        body += [f"<p class='warn'>{esc(n)}</p>" for n in rec.notes]
        for title, text in (
            ("vLLM command line", rec.vllm_command),
            ("docker compose command:", rec.compose_snippet),
            ("docker run", rec.docker_run),
        ):
            body.append(f"<h3>{esc(title)}</h3><pre>{esc(text)}</pre>")
    body.append("<h2>Validation</h2>")
    if rec is not None and rec.validation is not None:
        body.append(f"<p>{esc(rec.validation.words())}</p>" + _df_html(validation_frame(rep)))
    else:
        body.append(f"<p>{esc(_validation_lines(rep)[0])}</p>")
    body.append("<h2>Success criteria</h2><pre>" + esc("\n".join(_criteria_lines(rep))) + "</pre>")
    body.append("<h2>Pareto front</h2>")
    body.append(_df_html(_front_frame(rep)) if rep.front else "<p>No completed trial.</p>")
    body.append("<pre>" + esc("\n".join(_group_lines(rep))) + "</pre>")
    body.append("<h2>What mattered</h2>")
    body.append(_df_html(effects_frame(rep)) if rep.effects else "<p>Too few trials.</p>")
    first = True
    body.append("<h2>Plots</h2>")
    for title, fig in figures(st, rep.front):
        if isinstance(fig, go.Figure):
            body.append(fig.to_html(full_html=False, include_plotlyjs=first))
            first = False
        else:
            body.append(f"<h3>{esc(title)}</h3><p class='warn'>{esc(fig)}</p>")
    body.append("<h2>All trials</h2>" + _df_html(rep.table))
    body.append("<h2>Measurement quality</h2><ul>")
    body += [f"<li class='warn'>trial {n}: {esc(w)}</li>" for n, w in rep.warnings]
    body.append("</ul><h2>Failed trials by reason</h2>")
    for g in rep.failures:
        ids = ", ".join(str(t.number) for t in g.trials)
        body.append(f"<h3>{esc(g.reason)} ({len(g.trials)}): trials {ids}</h3>")
        body.append(f"<p>{esc(str(g.trials[0].user_attrs.get('error', '')))}</p>")
        tail = g.example_tail()
        if tail:
            body.append(f"<details><summary>log tail</summary><pre>{esc(tail)}</pre></details>")
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>vllm-tuner: {esc(st.study_name)}</title><style>{_CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>"
    )


def write_report(study: optuna.Study, outdir: Path, rule: Rule | None = None) -> dict[str, Path]:
    """Write report.md, report.html, pareto.csv, pareto.json and trials.csv into ``outdir``."""
    rep = build_report(study, rule, root=outdir)
    paths = write_pareto(study, outdir)
    paths["report_md"] = outdir / "report.md"
    paths["report_html"] = outdir / "report.html"
    paths["report_md"].write_text(render_markdown(rep))
    paths["report_html"].write_text(render_html(rep))
    return paths
