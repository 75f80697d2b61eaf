"""Two studies' Pareto fronts side by side (two models, two GPU types, two vLLM versions)."""

from __future__ import annotations

from pathlib import Path

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial
from plotly.subplots import make_subplots

from tuner.report.model import md_table
from tuner.report.pareto import pareto_frame, pareto_trials
from tuner.report.synthesis import name_of

__all__ = ["write_compare"]

COLOURS = ("#d62728", "#1f77b4")


def _figure(studies: list[optuna.Study], fronts: list[list[FrozenTrial]]) -> go.Figure:
    """The studies' fronts on the objectives pairwise, one colour per study."""
    names = list(studies[0].metric_names or [])
    pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))] or [(0, 0)]
    fig = make_subplots(rows=1, cols=len(pairs), horizontal_spacing=0.08)
    for k, (st, front) in enumerate(zip(studies, fronts, strict=True)):
        for col, (i, j) in enumerate(pairs, start=1):
            fig.add_trace(
                go.Scatter(
                    x=[t.values[i] for t in front],
                    y=[t.values[j] for t in front],
                    mode="markers+text",
                    text=[name_of(t) for t in front],
                    textposition="top center",
                    textfont={"size": 9},
                    marker={"color": COLOURS[k % 2], "size": 10},
                    name=st.study_name,
                    legendgroup=st.study_name,
                    showlegend=col == 1,
                ),
                row=1,
                col=col,
            )
            fig.update_xaxes(title_text=names[i], row=1, col=col)
            fig.update_yaxes(title_text=names[j], row=1, col=col)
    fig.update_layout(title="Pareto fronts compared", height=460)
    return fig


def write_compare(
    studies: list[optuna.Study], outdir: Path
) -> tuple[list[list[FrozenTrial]], dict[str, Path]]:
    """Fronts of each study, and compare_A_vs_B.md/.html written into ``outdir``."""
    fronts = [pareto_trials(st)[0] for st in studies]
    stem = "compare_" + "_vs_".join(st.study_name for st in studies)
    paths = {"compare_md": outdir / f"{stem}.md", "compare_html": outdir / f"{stem}.html"}
    md = [f"# {' vs '.join(st.study_name for st in studies)}", ""]
    for st in studies:
        df, feasible = pareto_frame(st)
        md += [f"## {st.study_name}" + ("" if feasible else " (no feasible trial)"), ""]
        md += [md_table(df) if not df.empty else "No completed trial.", ""]
    paths["compare_md"].write_text("\n".join(md))
    fig = _figure(studies, fronts)
    paths["compare_html"].write_text(fig.to_html(full_html=True, include_plotlyjs=True))
    return fronts, paths
