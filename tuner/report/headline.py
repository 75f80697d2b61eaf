"""The report's first screen: what to change, by how much, how sure, validated or not.

A vLLM operator opens the report to learn what to put in production. The headline answers that
in three lines before any method: the settings that change from the user's configuration (the
baseline seed, else vLLM's defaults), the effect on TTFT HIT against the baseline with its 95 %
interval (over fresh deployments when validation ran, else over one deployment's samples), and
how far the pick can be trusted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from tuner.decide import (
    HIT,
    MISS,
    VRAM,
    CandidateResult,
    NoiseModel,
    baseline_trial,
    load_observations,
    reference_params,
    study_noise,
)
from tuner.decide.guard import guard_line
from tuner.metrics import METRICS, Interval
from tuner.report.recommend import Recommendation
from tuner.report.synthesis import dimension_titles
from tuner.trial import StoredTrial, metric_value

__all__ = ["Line", "headline"]


@dataclass(frozen=True, slots=True)
class Line:
    """One line of the headline: a bold label and its text."""

    label: str
    text: str

    def markdown(self) -> str:
        """The line in markdown, its label in bold."""
        return f"**{self.label}** {self.text}"


def _shown(v: Any) -> str:
    """A setting as the headline names it: on/off, default for a flag left out."""
    if v is None:
        return "default"
    if isinstance(v, bool):
        return "on" if v else "off"
    return str(v)


def _changes(study: optuna.Study, pick: FrozenTrial) -> Line:
    """The settings the pick changes from the user's configuration, in words."""
    ref = reference_params(study)
    base = baseline_trial(study)
    titles = dimension_titles(study)
    diffs = [
        f"{titles.get(k, k)} {_shown(ref.get(k) if ref else None)} → {_shown(v)}"
        for k, v in pick.params.items()
        if (ref.get(k) if ref is not None else None) != v
    ]
    against = (
        f"the baseline (`{StoredTrial(base).name}`)" if base is not None else ("vLLM's defaults")
    )
    if not diffs:
        return Line("Keep", f"{against}: no setting measured better, within the criteria.")
    n = len(diffs)
    return Line(
        f"Change {n} setting{'s' if n > 1 else ''}", f"from {against}: " + "; ".join(diffs) + "."
    )


def _relative(diff: Interval, base: float) -> str:
    """An interval of a difference in percent of ``base``."""
    lo, hi = diff
    if not (math.isfinite(lo) and math.isfinite(hi)) or not base:
        return "no interval: too few samples"
    return f"95 % interval {lo / base * 100:+.0f} to {hi / base * 100:+.0f} %"


def _effect(
    study: optuna.Study, rec: Recommendation, root: Any, base: FrozenTrial | None
) -> Line | None:
    """TTFT HIT of the pick against the baseline, with the interval of the difference."""
    if base is None or base.number == rec.trial.number or HIT not in (study.metric_names or ()):
        return None
    stat = METRICS[HIT].stat
    v = rec.validation
    mine = theirs = None
    if v is not None and v.pick is not None:
        by_number: dict[int, CandidateResult] = {r.candidate.number: r for r in v.results}
        mine, theirs = by_number.get(rec.trial.number), by_number.get(base.number)
    if mine is not None and theirs is not None and mine.samples and theirs.samples:
        noise = _noise(study, rec)
        value, ref = mine.value, theirs.value
        diff = noise.diff(stat, mine.samples, theirs.samples)
        where = f"over {len(mine.samples)} and {len(theirs.samples)} fresh deployments"
        search = " (search)"  # the other objectives come from the search's deployments
    else:
        value, ref = metric_value(study, rec.trial, HIT), metric_value(study, base, HIT)
        obs = load_observations(study, root, [rec.trial, base])
        spec = METRICS[HIT]
        a = spec.samples(obs[rec.trial.number]) if rec.trial.number in obs else []
        b = spec.samples(obs[base.number]) if base.number in obs else []
        diff = _noise(study, rec).diff(stat, [a], [b]) if a and b else (math.nan, math.nan)
        where = "one deployment each"
        search = ""
    rel = (value - ref) / ref * 100 if ref else math.nan
    text = (
        f"{value:.1f} ms against {ref:.1f} ms for the baseline ({rel:+.0f} %, "
        f"{_relative(diff, ref)}; {where})"
    )
    rest = []
    for name, label, unit in ((MISS, "MISS", "ms"), (VRAM, "VRAM", "MiB")):
        if name in (study.metric_names or ()):
            x, y = metric_value(study, rec.trial, name), metric_value(study, base, name)
            if math.isfinite(x) and math.isfinite(y) and y:
                rest.append(f"{label} {x:.0f} against {y:.0f} {unit} ({(x - y) / y * 100:+.0f} %)")
    if rest:
        text += "; " + ", ".join(rest) + search
    lo, hi = diff
    if math.isfinite(lo) and math.isfinite(hi) and lo <= 0 <= hi:
        # The pick may still be chosen for another objective; on HIT it is no proven gain.
        text += ". Not beyond the noise: on HIT the baseline may be as good"
    return Line("TTFT HIT", text + ".")


def _noise(study: optuna.Study, rec: Recommendation) -> NoiseModel:
    """The noise the pick's figures carry: validation's model, else the search's group's."""
    if rec.validation is not None and rec.validation.noise is not None:
        return rec.validation.noise
    if rec.group is not None and rec.group.noise is not None:
        return rec.group.noise
    return study_noise(study)


def _sureness(study: optuna.Study, rec: Recommendation) -> Line:
    """Validated or not, what the noise lets the data tell apart, what the group within noise
    means for the pick, and how optimistic the search's own figure was."""
    v, noise = rec.validation, _noise(study, rec)
    if v is None or v.pick is None:
        words = (
            f"not validated: each configuration was deployed once (`tuner validate "
            f"{study.study_name}` redeploys the candidates on held-out conversations). With "
            f"{noise.words()}, one deployment each cannot tell apart differences under about "
            f"{noise.detectable(1, 1):.0%}."
        )
        if rec.group is not None and len(rec.group.members) > 1:
            words += (
                f" {len(rec.group.members)} configurations are within noise of each other on "
                "HIT; this one changes the fewest settings."
            )
        return Line("How sure:", words)
    deployments = len(v.pick.deployments)
    held = {True: "the search's pick held", False: "the search's pick did NOT hold",
            None: ""}[v.held]  # fmt: skip
    words = (
        f"validated on {deployments} fresh deployment(s) each, on held-out conversations"
        + (f"; {held}" if held else "")
        + f". With {noise.words()}, {deployments} deployments each tell apart differences over "
        f"about {noise.detectable(deployments, deployments):.0%}."
    )
    searched = metric_value(study, rec.trial, HIT)
    if math.isfinite(searched) and v.pick.value > 0 and v.kept is None:
        words += (
            f" The search measured it at {searched:.1f} ms on its own conversations "
            f"({(searched - v.pick.value) / v.pick.value * 100:+.0f} % against validation: "
            "the best of many single deployments is biased low, so the figure above is "
            "validation's)."
        )
    if len(v.group) > 1:
        words += (
            f" {len(v.group)} candidates are within noise of each other on HIT; this one "
            "changes the fewest settings."
        )
    if v.done < v.planned:
        words += f" Only {v.done} of {v.planned} planned deployments ran."
    return Line("How sure:", words)


def headline(study: optuna.Study, rec: Recommendation | None, root: Any = None) -> list[Line]:
    """The report's first lines: the change, its effect with an interval, how sure."""
    if rec is None:
        return [Line("Nothing to recommend yet:", "no trial completed.")]
    lines = [_changes(study, rec.trial)]
    base = baseline_trial(study)
    effect = _effect(study, rec, root, base)
    if effect is not None:
        lines.append(effect)
    lines.append(_sureness(study, rec))
    answers = (
        guard_line(study, rec.trial) if base is None or base.number != rec.trial.number else None
    )
    if answers is not None:
        label, _, text = answers.partition(": ")
        lines.append(Line(label + ":", text))
    return lines
