"""Summary statistics of raw samples: a median is not enough, the spread decides the ranking."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from tuner.metrics import percentile

__all__ = ["Summary", "percentile", "summarize"]


@dataclass(frozen=True, slots=True)
class Summary:
    """Summary statistics of one series of samples (NaN everywhere when empty)."""

    n: int
    median: float
    p90: float
    min: float
    max: float
    mean: float
    stdev: float
    iqr: float

    def as_dict(self) -> dict[str, float | int]:
        """The summary as plain data, for measurements.json."""
        return asdict(self)


def summarize(values: Sequence[float]) -> Summary:
    """Median, p90, range, mean, standard deviation and IQR of ``values``."""
    if not values:
        nan = math.nan
        return Summary(0, nan, nan, nan, nan, nan, nan, nan)
    return Summary(
        n=len(values),
        median=statistics.median(values),
        p90=percentile(values, 90),
        min=min(values),
        max=max(values),
        mean=statistics.fmean(values),
        stdev=statistics.stdev(values) if len(values) > 1 else 0.0,
        iqr=percentile(values, 75) - percentile(values, 25),
    )
