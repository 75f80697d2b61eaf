"""The mission's synthesis table, success criteria, failures by reason and measurement quality."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from tuner.decide import baseline_trial
from tuner.decide.guard import NO_REFERENCE, agreement, baseline_answers
from tuner.errors import Reason
from tuner.front import feasible
from tuner.trial import Attr, StoredTrial, StudyAttr

__all__ = [
    "FailureGroup",
    "baseline_trial",
    "dimension_titles",
    "failures_by_reason",
    "quality_warnings",
    "ranges_overlap",
    "sample_range",
    "synthesis_frame",
]

# Column order of the mission's synthesis table after the dimensions (units in the names).
MEASURE_COLUMNS = [
    "ttft_miss_ms", "ttft_hit_ms", "speedup", "gain_pct", "miss_vs_base_pct", "hit_vs_base_pct",
    "throughput_tok_s", "vram_mib", "vram_gpu_max_mib", "startup_s", "hit_rate", "answers_same",
    "meets_criteria", "status",
]  # fmt: skip
# A MISS/HIT ratio above this with no prefix-cache hit cannot be a cache effect.
SPEEDUP_WITHOUT_HITS = 1.2
NOISY_RELATIVE_RANGE = 0.5  # (max - min) / median of the HIT samples
MIN_SAMPLES = 5


def _num(v: Any) -> float | None:
    """A number as a float (booleans and anything else: None)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def dimension_titles(study: optuna.Study) -> dict[str, str]:
    """The study's dimensions in space order, each with its report title.

    From what the study stored when it was created (the space's ``label:`` per dimension);
    studies from before labels existed show the names; failing that, every parameter seen.
    """
    labels = study.user_attrs.get(StudyAttr.DIMENSION_LABELS)
    if isinstance(labels, dict) and labels:
        return {str(k): str(v) for k, v in labels.items()}
    dims = study.user_attrs.get(StudyAttr.DIMENSIONS)
    if not isinstance(dims, list):
        dims = list(dict.fromkeys(p for t in study.get_trials(deepcopy=False) for p in t.params))
    return {str(d): str(d) for d in dims}


def name_of(t: FrozenTrial) -> str:
    """A trial's display name: its seed's names, else ``trial_N``."""
    return StoredTrial(t).name


def _status(t: FrozenTrial) -> str:
    """'ok', 'ok (= trial N)' for a pointer to another trial's measurement, else the reason."""
    view = StoredTrial(t)
    if t.state == TrialState.COMPLETE:
        dup = view.duplicate_of
        return "ok" if dup is None else f"ok (= trial {dup})"
    return str(view.reason or t.state.name.lower())


def synthesis_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per finished trial in the mission's format, baseline first, with deltas to it."""
    base = baseline_trial(study)
    b_miss = _num(base.user_attrs.get("ttft_miss_ms")) if base else None
    b_hit = _num(base.user_attrs.get("ttft_hit_ms")) if base else None
    titles = dimension_titles(study)
    reference = baseline_answers(study)
    rows: list[dict[str, Any]] = []
    done = (TrialState.COMPLETE, TrialState.FAIL)
    for t in study.get_trials(deepcopy=False, states=done):
        if StoredTrial(t).reason == Reason.DUPLICATE:
            continue  # a pointer to another trial, not a measurement
        a = t.user_attrs
        row: dict[str, Any] = {"config": name_of(t), "trial": t.number}
        for p, title in titles.items():
            row[title] = t.params.get(p)
        miss, hit = _num(a.get("ttft_miss_ms")), _num(a.get("ttft_hit_ms"))
        row.update(
            ttft_miss_ms=miss,
            ttft_hit_ms=hit,
            speedup=_num(a.get("speedup")),
            gain_pct=_num(a.get("gain_pct")),
            miss_vs_base_pct=(miss / b_miss - 1) * 100 if miss and b_miss else None,
            hit_vs_base_pct=(hit / b_hit - 1) * 100 if hit and b_hit else None,
            throughput_tok_s=_num(a.get("throughput_tok_s")),
            vram_mib=_num(a.get("vram_mib")),
            # under tensor parallelism what must fit one card, next to the server's total
            vram_gpu_max_mib=_num(a.get("vram_gpu_max_mib")),
            startup_s=_num(a.get("startup_s")),
            hit_rate=_num(a.get("hit_rate_hit")),
            # the guard against the baseline's answers, as stored (or computed now for a trial
            # measured before the baseline was)
            answers_same=agree.tokens_same if (agree := agreement(reference, t)) else None,
            meets_criteria=feasible(t),
            status=_status(t),
        )
        rows.append(row)
    df = pd.DataFrame(rows, columns=["config", "trial", *titles.values(), *MEASURE_COLUMNS])
    if base is not None and not df.empty:
        order = [0 if n == base.number else 1 for n in df["trial"]]
        df = df.assign(_o=order).sort_values(["_o", "trial"]).drop(columns="_o")
    return df.reset_index(drop=True)


@dataclass(frozen=True, slots=True)
class FailureGroup:
    """Failed trials sharing one reason, with an example log tail."""

    reason: str
    trials: tuple[FrozenTrial, ...]

    def example_tail(self, lines: int = 15) -> str:
        """The last ``lines`` of the first server log tail among the group's trials."""
        for t in self.trials:
            tail = t.user_attrs.get(Attr.LOG_TAIL)
            if tail:
                return "\n".join(str(tail).splitlines()[-lines:])
        return ""


def failures_by_reason(study: optuna.Study) -> list[FailureGroup]:
    """The configurations' failures grouped by reason, largest group first. What says nothing
    of its point (an interruption, the machine's fault, a duplicate) is no failure: left out."""
    groups: dict[str, list[FrozenTrial]] = defaultdict(list)
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        reason = StoredTrial(t).reason
        if reason is not None and reason.is_failure:
            groups[str(reason)].append(t)
    return [
        FailureGroup(r, tuple(ts))
        for r, ts in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    ]


def sample_range(t: FrozenTrial, metric: str) -> tuple[float, float] | None:
    """(min, max) of a trial's samples of ``metric`` (``ttft_hit`` / ``ttft_miss``), if recorded."""
    lo, hi = _num(t.user_attrs.get(f"{metric}_min_ms")), _num(t.user_attrs.get(f"{metric}_max_ms"))
    return (lo, hi) if lo is not None and hi is not None else None


def ranges_overlap(a: FrozenTrial, b: FrozenTrial, metric: str = "ttft_hit") -> bool:
    """Whether two trials' sample ranges of ``metric`` overlap: their difference is noise."""
    ra, rb = sample_range(a, metric), sample_range(b, metric)
    return ra is not None and rb is not None and ra[0] <= rb[1] and rb[0] <= ra[1]


def quality_warnings(study: optuna.Study, front: list[FrozenTrial]) -> list[tuple[int, str]]:
    """(trial number, warning) for results that should not be trusted as they stand."""
    out: list[tuple[int, str]] = []
    reference = baseline_answers(study)
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if StoredTrial(t).duplicate_of is not None:
            continue
        a = t.user_attrs
        speedup, rate = _num(a.get("speedup")), a.get("hit_rate_hit")
        if speedup is not None and speedup > SPEEDUP_WITHOUT_HITS and rate == 0:
            out.append(
                (
                    t.number,
                    f"MISS/HIT x{speedup:.2f} with no prefix-cache hit: not a cache effect "
                    "(warm-up, scheduling or noise)",
                )
            )
        if rate is None:
            out.append((t.number, "no /metrics from the server: cache hit rate unknown"))
        elif rate == 0 and "--no-enable-prefix-caching" not in (a.get(Attr.FLAGS) or ()):
            # on unless turned off: vLLM V1 enables prefix caching by default
            # e.g. a KV-cache dtype that silently turns the cache off: latency shows nothing
            out.append((t.number, "prefix caching is on, but no continuation turn found cached "
                        "tokens: the cache is not used with these flags"))  # fmt: skip
        r, hit = sample_range(t, "ttft_hit"), _num(a.get("ttft_hit_ms"))
        if r is not None and hit and (r[1] - r[0]) / hit > NOISY_RELATIVE_RANGE:
            out.append(
                (
                    t.number,
                    f"HIT samples spread {r[0]:.1f}-{r[1]:.1f} ms (more than "
                    f"{NOISY_RELATIVE_RANGE:.0%} of the median)",
                )
            )
        convs, distinct = a.get("conversations"), a.get("distinct_conversations")
        if isinstance(convs, int) and isinstance(distinct, int) and convs > distinct:
            out.append((t.number, f"{convs} conversations measured from a trace split of "
                        f"{distinct} distinct ones: repeats weigh in its figures"))  # fmt: skip
        n = a.get("n_hit")
        if isinstance(n, int) and n < MIN_SAMPLES:
            out.append((t.number, f"only {n} HIT samples"))
        agree = agreement(reference, t)
        if agree is not None and not agree.same:
            tools = (
                f", tool calls {agree.tools_same:.0%} the same"
                if agree.tools_same is not None
                else ""
            )
            out.append((t.number, f"answers differ from the baseline's on {agree.changed} of "
                        f"{len(agree.first_difference)} greedy probes ({agree.tokens_same:.0%} "
                        f"of output tokens identical{tools})"))  # fmt: skip
        elif a.get(Attr.GUARD_NOTE) and a.get(Attr.GUARD_NOTE) != NO_REFERENCE:
            out.append((t.number, f"answer guard: {a[Attr.GUARD_NOTE]}"))
    for i, x in enumerate(front):
        for y in front[i + 1 :]:
            if ranges_overlap(x, y):
                dx = _num(x.user_attrs.get("ttft_hit_ms")) or math.nan
                dy = _num(y.user_attrs.get("ttft_hit_ms")) or math.nan
                out.append(
                    (
                        x.number,
                        f"front points {x.number} and {y.number}: HIT differs by "
                        f"{abs(dx - dy):.1f} ms, within their sample ranges",
                    )
                )
    return out
