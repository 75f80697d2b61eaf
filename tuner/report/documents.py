"""report.md and a self-contained report.html (plotly.js inlined: opens offline), both read top
down as an operator does: the headline, the lines to paste, why, then the evidence."""

from __future__ import annotations

import html
from pathlib import Path

import optuna
import pandas as pd
import plotly.graph_objects as go

from tuner.decide import baseline_trial, best_reuse, headroom, tails_apart
from tuner.front import measured_trials
from tuner.report.figures import figures
from tuner.report.model import (
    Report,
    build_report,
    cell,
    effects_frame,
    front_frame,
    md_table,
    validation_frame,
)
from tuner.report.pareto import write_pareto
from tuner.report.recommend import Recommendation, Rule
from tuner.trial import Attr, StoredTrial, StudyAttr

__all__ = ["Report", "build_report", "md_table", "write_report"]


def _first_line(attrs: dict[str, object]) -> str:
    """The first line of a failed trial's error."""
    lines = str(attrs.get("error") or "").strip().splitlines()
    return lines[0] if lines else "no message"


def _criteria_lines(rep: Report) -> list[str]:
    """The success criteria in words, the baseline's figures, the trials meeting them, and where
    --stop-when-met stopped the search."""
    crit = rep.study.user_attrs.get(StudyAttr.CRITERIA)
    if not crit:
        return ["No success criteria in the objective file."]
    base = baseline_trial(rep.study)
    if base is not None:
        state = (
            f" (trial {base.number}: MISS {base.user_attrs['ttft_miss_ms']:.1f} ms, "
            f"HIT {base.user_attrs['ttft_hit_ms']:.1f} ms)"
        )
    else:
        failed = [t for t in rep.study.trials if StoredTrial(t).is_seed(crit["baseline"])]
        reason = failed[-1].user_attrs.get("reason") if failed else None
        state = (
            f" (trial {failed[-1].number} {reason}: {_first_line(failed[-1].user_attrs)}; "
            "no trial can be judged against it)"
            if reason
            else " (not measured yet: no trial can be judged)"
        )
    lines = [
        f"Baseline: `{crit['baseline']}`{state}",
        f"- TTFT MISS <= {crit['miss_max_ratio']:g} x baseline MISS",
        f"- TTFT HIT <= {crit['hit_max_ratio']:g} x baseline HIT",
        f"- MISS/HIT speed-up >= {crit['min_speedup']:g}",
    ]
    meets = rep.table[rep.table["meets_criteria"] == True]  # noqa: E712 (pandas mask)
    names = ", ".join(f"{c} (#{t})" for c, t in zip(meets["config"], meets["trial"], strict=True))
    lines.append(f"\nTrials meeting all criteria ({len(meets)}): {names or 'none'}")
    met = rep.study.user_attrs.get(StudyAttr.GOAL_MET)
    if isinstance(met, dict):
        lines.append(
            f"The search stopped early (--stop-when-met) at {met.get('deployments')} "
            f"deployments: trial {met.get('trial')} meets every criterion with intervals "
            "within the objectives' precision."
        )
    return lines


def _trace_lines(rep: Report) -> list[str]:
    """Which trace, which split, how many distinct conversations the figures come from."""
    fp = rep.study.user_attrs.get(StudyAttr.FINGERPRINT) or {}
    wl = (fp.get("objective") or {}).get("workload") or {}
    if wl.get("kind") != "trace":
        return []
    seen = (t.user_attrs.get("distinct_conversations") for t in rep.study.get_trials())
    distinct = sorted({a for a in seen if isinstance(a, int)})
    counts = ", ".join(map(str, distinct)) or "unknown"
    return [
        f"Workload: the trace {wl.get('path')} ({wl.get('format')}), its search split (the "
        f"first {1 - float(wl.get('holdout') or 0):.0%}; validation replays the rest); "
        f"distinct conversations measured per trial: {counts}.",
        "",
    ]


def _spend_lines(rep: Report) -> list[str]:
    """What the search spared: why it ended before --trials, and the trials that stopped
    measuring once they were behind the front beyond the noise."""
    lines = []
    why = rep.study.user_attrs.get(StudyAttr.SETTLED)
    if isinstance(why, dict) and why.get("words"):
        lines.append(f"The search ended before --trials: {why['words']}.")
    cut = [t for t in rep.study.get_trials(deepcopy=False)
           if t.user_attrs.get("stop_reason") == "dominated"]  # fmt: skip
    if cut:
        listed = ", ".join(
            f"{t.number} (behind {t.user_attrs.get(Attr.DOMINATED_BY)})" for t in cut
        )
        lines.append(
            f"{len(cut)} trial(s) stopped measuring once a front trial was ahead beyond the "
            f"noise (their figures are kept, from fewer conversations): {listed}."
        )
    return [*lines, ""] if lines else []


def _paste_lines(rec: Recommendation) -> list[str]:
    """The lines to paste: only what production needs (the profile's own flags kept)."""
    return [
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


def _top_lines(rep: Report) -> list[str]:
    """Headline, the lines to paste, then the method: what an operator reads first."""
    rec = rep.recommendation
    lines = [line.markdown() + "  " for line in rep.headline]
    if rec is None:
        return lines
    lines += ["", *[f"> Note: {n}" for n in rec.notes], ""]
    lines += [f"## Lines to paste: **{rec.name}** (trial {rec.trial.number})", ""]
    lines += [*_paste_lines(rec), "", "## Why this one", "", rec.explanation]
    return lines


def _effect_lines(rep: Report) -> list[str]:
    """The measurable effects as a table; the rest folded below it."""
    if not rep.effects:
        return ["Too few measured trials."]
    shown, rest = effects_frame(rep, True), effects_frame(rep, False)
    lines = [md_table(shown) if not shown.empty else "No effect is measurable yet."]
    if not rest.empty:
        lines += ["", f"<details><summary>{len(rest)} more readings: no measurable effect, or "
                  "too few trials</summary>", "", md_table(rest), "", "</details>"]  # fmt: skip
    return lines


def _group_lines(rep: Report) -> list[str]:
    """The best group on HIT and every candidate's interval of its difference to the fastest."""
    rec = rep.recommendation
    if rec is None or rec.group is None:
        return []
    g = rec.group
    lines = [f"Best group on {g.metric} (within noise of trial {g.best.number}): "
             + ", ".join(str(n) for n in g.numbers)]  # fmt: skip
    for n, (lo, hi) in sorted(g.diffs.items()):
        where = "in the group" if n in g.numbers else "outside"
        lines.append(f"- trial {n}: difference to the fastest [{lo:+.1f}, {hi:+.1f}] ({where})")
    reuse = best_reuse(g.members)
    for t in g.members:
        near = headroom(t, reuse)
        lines.append(f"- trial {t.number} headroom: " + ("; ".join(near) if near else "room"))
    if g.noise is not None:
        lines.append(f"Noise: {g.noise.words()}.")
    return lines


def _soak_lines(rep: Report) -> list[str]:
    """The soak of the pick (``tuner soak``), when one was run: drift and every window."""
    soak = rep.study.user_attrs.get(StudyAttr.SOAK)
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


def _tail_lines(rep: Report) -> list[str]:
    """Knobs that move a median one way and its tail the other: one percentile alone misleads."""
    lines = []
    for med, tail in tails_apart(rep.study, measured_trials(rep.study)):
        lines.append(
            f"> {med.dimension} = {med.value} moves {med.metric} {med.delta:+.1f} but "
            f"{tail.metric} {tail.delta:+.1f}: the median and the tail disagree."
        )
    return [*lines, ""] if lines else []


def _validation_lines(rep: Report) -> list[str]:
    """What validation found and its table, or how to run it."""
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
        *_top_lines(rep),
        "",
        f"Objectives: {', '.join(st.metric_names or [])} (all minimised). "
        f"{n_done} finished trials; {sum(len(g.trials) for g in rep.failures)} failed.",
        "",
        *_trace_lines(rep),
        *_spend_lines(rep),
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
        md_table(front_frame(rep)) if rep.front else "No completed trial.",
        "",
        *_group_lines(rep),
        "",
        "## What mattered",
        "",
        *_tail_lines(rep),
        "Each dimension value against the others, from the study's measured trials: the "
        "difference of mean objective values and its 95 % bootstrap interval (an interval that "
        "contains 0 is no measurable effect). PED-ANOVA importances are in report.html.",
        "",
        *_effect_lines(rep),
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
    """A table as HTML, its cells formatted as in the markdown."""
    cells = pd.DataFrame({c: [cell(v, str(c)) for v in df[c]] for c in df.columns})
    return cells.to_html(index=False, border=0, escape=True)


def render_html(rep: Report) -> str:
    """report.html: the markdown's content plus plots, self-contained (plotly.js inlined)."""
    st = rep.study
    esc = html.escape
    body = [f"<h1>Study {esc(st.study_name)}</h1>"]
    body += [f"<p><b>{esc(line.label)}</b> {esc(line.text)}</p>" for line in rep.headline]
    rec = rep.recommendation
    if rec is not None:
        body += [f"<p class='warn'>{esc(n)}</p>" for n in rec.notes]
        body.append(f"<h2>Lines to paste: {esc(rec.name)} (trial {rec.trial.number})</h2>")
        for title, text in (
            ("vLLM command line", rec.vllm_command),
            ("docker compose command:", rec.compose_snippet),
            ("docker run", rec.docker_run),
        ):
            body.append(f"<h3>{esc(title)}</h3><pre>{esc(text)}</pre>")
        body.append(f"<h2>Why this one</h2><p>{esc(rec.explanation)}</p>")
    body.append("<h2>Validation</h2>")
    if rec is not None and rec.validation is not None:
        body.append(f"<p>{esc(rec.validation.words())}</p>" + _df_html(validation_frame(rep)))
    else:
        body.append(f"<p>{esc(_validation_lines(rep)[0])}</p>")
    body.append("<h2>Success criteria</h2><pre>" + esc("\n".join(_criteria_lines(rep))) + "</pre>")
    body.append("<h2>Pareto front</h2>")
    body.append(_df_html(front_frame(rep)) if rep.front else "<p>No completed trial.</p>")
    body.append("<pre>" + esc("\n".join(_group_lines(rep))) + "</pre>")
    body.append("<h2>What mattered</h2>")
    if rep.effects:
        rest = effects_frame(rep, False)
        body.append(_df_html(effects_frame(rep, True)))
        body.append(f"<details><summary>{len(rest)} more readings: no measurable effect, or too "
                    f"few trials</summary>{_df_html(rest)}</details>")  # fmt: skip
    else:
        body.append("<p>Too few trials.</p>")
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
