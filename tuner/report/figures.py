"""Plotly figures of a study: the front in pairwise projections, spreads, Optuna's own plots."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from itertools import combinations

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState
from plotly.subplots import make_subplots

from tuner.report.synthesis import baseline_trial, name_of
from tuner.trial import Attr

__all__ = ["figures"]

log = logging.getLogger(__name__)
LABELS = {
    "ttft_hit_ms": "TTFT HIT (ms)",
    "ttft_miss_ms": "TTFT MISS (ms)",
    "vram_mib": "VRAM (MiB)",
}


def _measured(study: optuna.Study) -> list[FrozenTrial]:
    """Completed trials with a measurement of their own (no pointer to another trial's)."""
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if Attr.DUPLICATE_OF not in t.user_attrs
    ]


def _hover(t: FrozenTrial) -> str:
    """A point's hover text: its name, trial and parameters."""
    params = ", ".join(f"{k}={v}" for k, v in t.params.items())
    return f"{name_of(t)} (trial {t.number})<br>{params}"


def pairwise(study: optuna.Study, front: list[FrozenTrial]) -> go.Figure:
    """Every pair of objectives; the 3-objective front highlighted in each projection."""
    names = list(study.metric_names or [])
    pairs = list(combinations(range(len(names)), 2)) or [(0, 0)]
    fig = make_subplots(rows=1, cols=len(pairs), horizontal_spacing=0.08)
    trials = _measured(study)
    on_front = {t.number for t in front}
    base = baseline_trial(study)
    for col, (i, j) in enumerate(pairs, start=1):
        groups = (
            ("other trials", [t for t in trials if t.number not in on_front], "#9aa0a6", 8),
            ("Pareto front", [t for t in trials if t.number in on_front], "#d62728", 11),
            ("baseline", [base] if base is not None else [], "#1f77b4", 13),
        )
        for label, ts, colour, size in groups:
            if not ts:
                continue
            fig.add_trace(
                go.Scatter(
                    x=[t.values[i] for t in ts],
                    y=[t.values[j] for t in ts],
                    mode="markers+text" if label != "other trials" else "markers",
                    text=[name_of(t) if label != "other trials" else "" for t in ts],
                    textposition="top center",
                    textfont={"size": 9},
                    hovertext=[_hover(t) for t in ts],
                    hoverinfo="text+x+y",
                    marker={
                        "color": colour,
                        "size": size,
                        "symbol": "diamond" if label == "baseline" else "circle",
                    },
                    name=label,
                    legendgroup=label,
                    showlegend=col == 1,
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text=LABELS.get(names[i], names[i]), row=1, col=col)
        fig.update_yaxes(title_text=LABELS.get(names[j], names[j]), row=1, col=col)
    fig.update_layout(title="Objectives pairwise (front of all 3 objectives in red)", height=460)
    return fig


def spread(study: optuna.Study, front: list[FrozenTrial]) -> go.Figure:
    """Median TTFT with the min-max range of its samples: overlapping bars are not a ranking."""
    trials = sorted(_measured(study), key=lambda t: t.user_attrs.get("ttft_hit_ms", 0.0))
    fig = go.Figure()
    on_front = {t.number for t in front}
    for metric, colour in (("ttft_hit", "#d62728"), ("ttft_miss", "#1f77b4")):
        med = [float(t.user_attrs.get(f"{metric}_ms", float("nan"))) for t in trials]
        lo = [
            float(t.user_attrs.get(f"{metric}_min_ms", m)) for t, m in zip(trials, med, strict=True)
        ]
        hi = [
            float(t.user_attrs.get(f"{metric}_max_ms", m)) for t, m in zip(trials, med, strict=True)
        ]
        fig.add_trace(
            go.Scatter(
                x=[f"{'★ ' if t.number in on_front else ''}{name_of(t)}" for t in trials],
                y=med,
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": [h - m for h, m in zip(hi, med, strict=True)],
                    "arrayminus": [m - low for m, low in zip(med, lo, strict=True)],
                },
                mode="markers",
                marker={"color": colour, "size": 9},
                name=LABELS.get(f"{metric}_ms", metric),
            )
        )
    fig.update_layout(
        title="Median TTFT and the range of its samples per configuration (★ = Pareto front)",
        yaxis_title="ms",
        height=480,
        xaxis_tickangle=-35,
    )
    return fig


def _target(i: int) -> Callable[[FrozenTrial], float]:
    """The value of objective ``i``, for Optuna's plots."""
    return lambda t: float(t.values[i])


def optuna_plots(study: optuna.Study) -> list[tuple[str, go.Figure | str]]:
    """Optuna's parallel coordinates and parameter importances per objective (or why not)."""
    out: list[tuple[str, go.Figure | str]] = []
    names = list(study.metric_names or [])
    measured = _measured(study)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # PED-ANOVA reminds that it ranks for low target values: all objectives are minimised.
        warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")
        # With few trials the "good" quantile is every trial: the importances would all be equal,
        # which reads as a finding; say it is not available instead.
        warnings.filterwarnings("error", message="Target and region quantiles select the same")
        for i, n in enumerate(names[:2]):
            title = f"Parallel coordinates, coloured by {LABELS.get(n, n)}"
            try:
                fig = optuna.visualization.plot_parallel_coordinate(
                    study, target=_target(i), target_name=LABELS.get(n, n)
                )
                fig.update_layout(title=title)
                out.append((title, fig))
            except (ValueError, RuntimeError) as exc:
                out.append((title, f"not available: {exc}"))
        title = "Parameter importances (PED-ANOVA) per objective"
        if len(measured) < 4:
            out.append((title, f"not available: {len(measured)} measured trials, need 4"))
            return out
        try:
            fig = optuna.visualization.plot_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator()
            )
            fig.update_layout(title=title)
            out.append((title, fig))
        except (ValueError, RuntimeError, ZeroDivisionError, UserWarning) as exc:
            log.info("importances not computable: %s", exc)
            out.append((title, f"not available: {exc}"))
    return out


def figures(study: optuna.Study, front: list[FrozenTrial]) -> list[tuple[str, go.Figure | str]]:
    """(title, figure or reason it is missing), in report order."""
    if not _measured(study):
        return []
    return [
        ("Objectives pairwise", pairwise(study, front)),
        ("Spread of the samples", spread(study, front)),
        *optuna_plots(study),
    ]
