"""The metric table: every number a trial can be judged by, defined once.

Each :class:`Metric` names a series of raw samples (or a scalar) that measurement produces, the
statistic that reduces it, its unit and its direction. The objective YAML refers to metrics by
name (as objectives or constraints), measurement provides the :class:`Observations`, and the
study records ``metric.compute(observations)`` for every metric in :data:`METRICS`; the report
reads the recorded values back by the same names.

Example:
    >>> obs = Observations(series={"ttft_hit_ms": [80.0, 90.0, 100.0]})
    >>> METRICS["ttft_hit_ms"].compute(obs)
    90.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "METRICS",
    "Direction",
    "Interval",
    "Metric",
    "Observations",
    "Stat",
    "bootstrap_diff",
    "bootstrap_diff_grouped",
    "bootstrap_diff_two_level",
    "bootstrap_interval",
    "metric",
    "within_precision",
    "percentile",
]

BOOTSTRAP_RESAMPLES = 2000
Interval = tuple[float, float]

Direction = Literal["minimize", "maximize"]
Stat = Literal["median", "p90", "p99", "mean", "min", "max", "value"]


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), ``q`` in [0, 100]; NaN when empty."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass(frozen=True, slots=True)
class Observations:
    """What one trial measured: raw sample series and single values, by name.

    ``series`` holds samples (e.g. ``ttft_hit_ms``: one TTFT per later turn); ``scalars`` holds
    values measured once (``vram_mib``, ``startup_s``, ...), ``None`` when unknown.
    """

    series: Mapping[str, Sequence[float]] = field(default_factory=dict)
    scalars: Mapping[str, float | None] = field(default_factory=dict)


def _reduce_rows(stat: Stat, rows: np.ndarray) -> np.ndarray:
    """``stat`` of every row of a (resamples x n) array."""
    if stat == "median":
        out = np.median(rows, axis=1)
    elif stat == "mean":
        out = rows.mean(axis=1)
    elif stat == "min":
        out = rows.min(axis=1)
    elif stat == "max":
        out = rows.max(axis=1)
    else:
        out = np.percentile(rows, {"p90": 90.0, "p99": 99.0}.get(stat, 50.0), axis=1)
    return np.asarray(out, dtype=float)


def _reduce(stat: Stat, xs: Sequence[float] | np.ndarray) -> float:
    """``stat`` of one sample (the same definition the bootstrap applies to every resample)."""
    if len(xs) == 0:
        return math.nan
    return float(_reduce_rows(stat, np.asarray(xs, dtype=float)[None, :])[0])


def _resample(xs: Sequence[float], rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` bootstrap resamples of ``xs``, one per row."""
    arr = np.asarray(xs, dtype=float)
    return arr[rng.integers(0, len(arr), size=(n, len(arr)))]


def bootstrap_interval(
    stat: Stat,
    xs: Sequence[float],
    *,
    level: float = 0.95,
    seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> Interval:
    """Percentile-bootstrap confidence interval of ``stat`` over ``xs`` (seeded: repeatable).

    NaNs when ``xs`` is empty; a point interval for a single sample (nothing to resample).

    Example:
        >>> bootstrap_interval("median", [5.0, 5.0, 5.0])
        (5.0, 5.0)
    """
    if not xs:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    values = _reduce_rows(stat, _resample(xs, rng, resamples))
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def bootstrap_diff(
    stat: Stat,
    a: Sequence[float],
    b: Sequence[float],
    *,
    level: float = 0.95,
    seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> Interval:
    """Percentile-bootstrap interval of ``stat(a) - stat(b)``, each sample resampled apart.

    Two configurations are indistinguishable on a metric when this interval contains 0;
    ``level`` is where callers apply a multiple-comparison correction (Bonferroni: 1 - 0.05/m).
    """
    if not a or not b:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    da = _reduce_rows(stat, _resample(a, rng, resamples))
    db = _reduce_rows(stat, _resample(b, rng, resamples))
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(da - db, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def _two_stage(
    stat: Stat, groups: Sequence[Sequence[float]], rng: np.random.Generator, resamples: int
) -> np.ndarray:
    """``stat`` of pooled two-stage resamples: deployments drawn with replacement, then each
    drawn deployment's samples drawn with replacement."""
    arrays = [np.asarray(g, dtype=float) for g in groups if len(g)]
    out = np.empty(resamples)
    for i in range(resamples):
        picked = rng.integers(0, len(arrays), len(arrays))
        pooled = np.concatenate(
            [arrays[j][rng.integers(0, len(arrays[j]), len(arrays[j]))] for j in picked]
        )
        out[i] = _reduce(stat, pooled)
    return out


def bootstrap_diff_grouped(
    stat: Stat,
    a: Sequence[Sequence[float]],
    b: Sequence[Sequence[float]],
    *,
    level: float = 0.95,
    seed: int = 0,
    resamples: int = 1000,
) -> Interval:
    """Interval of ``stat(a) - stat(b)`` where each side is several deployments' samples.

    The two-stage bootstrap resamples deployments, then samples within them, so the variance
    between deployments of the same flags is part of the interval (resampling the pooled
    samples alone would hide it).
    """
    if not any(len(g) for g in a) or not any(len(g) for g in b):
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    diff = _two_stage(stat, a, rng, resamples) - _two_stage(stat, b, rng, resamples)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(diff, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def _within(
    stat: Stat, groups: Sequence[Sequence[float]], rng: np.random.Generator, n: int
) -> np.ndarray:
    """``stat`` of ``n`` pooled resamples, each deployment's samples resampled within it."""
    rows = np.concatenate([_resample(g, rng, n) for g in groups if len(g)], axis=1)
    return _reduce_rows(stat, rows)


def bootstrap_diff_two_level(
    stat: Stat,
    a: Sequence[Sequence[float]],
    b: Sequence[Sequence[float]],
    *,
    cv: float,
    level: float = 0.95,
    seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> Interval:
    """Interval of ``stat(a) - stat(b)`` where each side is one or more deployments' samples,
    carrying both levels of noise: the samples within each deployment (resampled within it),
    and the variation between fresh deployments of the same flags, which a side's own
    deployments show too few of to resample: each side's estimate is scaled by the mean level
    of its n deployments, drawn around 1 with relative sd ``cv / sqrt(n)``. One deployment a
    side thus carries the full between-deployment variation; ``cv`` 0 is the within-only
    bootstrap.

    Example:
        >>> lo, hi = bootstrap_diff_two_level("median", [[100.0] * 9], [[104.0] * 9], cv=0.05)
        >>> lo < 0 < hi  # 4 % apart on one deployment each, at 5 % between deployments
        True
    """
    a = [g for g in a if len(g)]
    b = [g for g in b if len(g)]
    if not a or not b:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    da = _within(stat, a, rng, resamples)
    db = _within(stat, b, rng, resamples)
    if cv > 0:
        da = da * np.maximum(rng.normal(1.0, cv / math.sqrt(len(a)), resamples), 0.0)
        db = db * np.maximum(rng.normal(1.0, cv / math.sqrt(len(b)), resamples), 0.0)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(da - db, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


@dataclass(frozen=True, slots=True)
class Metric:
    """One row of the table: how a named number is computed from a trial's observations."""

    name: str
    unit: str
    direction: Direction
    source: str  # a series name (stat != "value") or a scalar name (stat == "value")
    stat: Stat
    description: str

    def compute(self, obs: Observations) -> float:
        """The metric's value for ``obs``; NaN when its source was not measured."""
        if self.stat == "value":
            v = obs.scalars.get(self.source)
            return float(v) if v is not None else math.nan
        return _reduce(self.stat, list(obs.series.get(self.source, ())))

    def samples(self, obs: Observations) -> list[float]:
        """The raw samples this metric reduces ([] for a single value)."""
        return [] if self.stat == "value" else list(obs.series.get(self.source, ()))

    def interval(self, obs: Observations, *, level: float = 0.95, seed: int = 0) -> Interval | None:
        """95 % bootstrap interval of the metric (None for a value measured once)."""
        if self.stat == "value":
            return None
        return bootstrap_interval(self.stat, self.samples(obs), level=level, seed=seed)


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("ttft_hit_ms", "ms", "minimize", "ttft_hit_ms", "median",
               "TTFT of later turns (HIT: the conversation's prefix was sent before), median"),
        Metric("ttft_hit_p90_ms", "ms", "minimize", "ttft_hit_ms", "p90",
               "TTFT of later turns, 90th percentile"),
        Metric("ttft_miss_ms", "ms", "minimize", "ttft_miss_ms", "median",
               "TTFT of first turns (MISS), median"),
        Metric("ttft_miss_p90_ms", "ms", "minimize", "ttft_miss_ms", "p90",
               "TTFT of first turns, 90th percentile"),
        Metric("vram_mib", "MiB", "minimize", "vram_mib", "value",
               "server memory: NVML per process on a GPU, RSS + KV cache on CPU"),
        Metric("vram_gpu_max_mib", "MiB", "minimize", "vram_gpu_max_mib", "value",
               "memory on the server's busiest GPU (NVML): what must fit one card under tensor "
               "parallelism"),
        Metric("speedup", "x", "maximize", "speedup", "value",
               "median MISS / median HIT: > 1 when later turns are faster"),
        Metric("throughput_tok_s", "tok/s", "maximize", "throughput_tok_s", "value",
               "output tokens of the measured requests / wall time of the measurement"),
        Metric("itl_ms", "ms", "minimize", "itl_ms", "median",
               "inter-token latency (per chunk, divided by the tokens it carries), median"),
        Metric("itl_p90_ms", "ms", "minimize", "itl_ms", "p90",
               "inter-token latency, 90th percentile"),
        Metric("e2e_ms", "ms", "minimize", "e2e_ms", "median",
               "end-to-end latency of a request (sent to last token), median"),
        Metric("e2e_p90_ms", "ms", "minimize", "e2e_ms", "p90",
               "end-to-end latency, 90th percentile"),
        Metric("goodput", "", "maximize", "goodput", "value",
               "share of measured requests meeting their class's TTFT and TPOT SLOs"),
        Metric("cached_share_hit", "", "maximize", "cached_share_hit", "value",
               "share of later turns' prompt tokens the prefix cache held (per-request usage)"),
        Metric("cached_share_miss", "", "minimize", "cached_share_miss", "value",
               "share of first turns' prompt tokens the prefix cache held (per-request usage)"),
        Metric("requests_s", "req/s", "maximize", "requests_s", "value",
               "measured requests answered / wall time of the measurement"),
        Metric("queue_ms", "ms", "minimize", "queue_ms", "value",
               "mean time a request waited before being scheduled (vLLM's queue-time histogram)"),
        Metric("preemptions", "", "minimize", "preemptions", "value",
               "requests preempted for lack of KV blocks during the measurement (/metrics)"),
        Metric("kv_peak", "", "minimize", "kv_peak", "value",
               "highest KV-cache usage (0-1) seen while measuring (vllm:kv_cache_usage_perc)"),
        Metric("startup_s", "s", "minimize", "startup_s", "value",
               "seconds from start until /health answered 200"),
        Metric("answers_same", "", "maximize", "answers_same", "value",
               "the guard's greedy answers against the baseline's: mean share of output tokens "
               "identical up to the first difference (1: the same answers)"),
        Metric("tools_same", "", "maximize", "tools_same", "value",
               "the guard's tool calls: share of the baseline's parsed calls made again, parsed "
               "and naming the same tool"),
        Metric("cost_per_mtok", "$/Mtok", "minimize", "cost_per_mtok", "value",
               "the profile's price per GPU-hour x GPUs / million output tokens per hour of "
               "requests that met their SLOs (all requests without SLOs)"),
    )
}  # fmt: skip


def metric(name: str) -> Metric:
    """The metric called ``name``; KeyError naming the known ones otherwise."""
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(METRICS)}") from None


def within_precision(value: float, ci: Interval | None, precision: float) -> bool:
    """Whether the 95 % interval ``ci`` of ``value`` is within ``precision`` x |value| each side
    (its half-width): the test of adaptive measurement and of ``--stop-when-met``. False when
    the value or the interval is unknown, or the value is 0."""
    if ci is None or not math.isfinite(value) or value == 0:
        return False
    if not (math.isfinite(ci[0]) and math.isfinite(ci[1])):
        return False
    return (ci[1] - ci[0]) / 2 <= precision * abs(value)
