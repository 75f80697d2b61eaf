"""When spending more GPU time cannot change the answer: a measurement already decided, a
search already settled.

Both rules only ever *stop* work, and both carry the two levels of noise (``decide.noise``):

- :func:`dominated_by`: a trial part-way through its measurement is behind a front point beyond
  the noise on an objective measured from samples and ahead of it on none: more conversations
  would only make a losing figure more precise.
- :func:`recent_gain`: the share of the front's hypervolume that the last k deployments added,
  each counted at the favourable end of its own interval, on a scale no finer than what
  deployments of the same flags vary by; a search whose recent deployments did not move the
  front, even read in their favour, has settled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from tuner.decide.groups import TIE
from tuner.decide.noise import Z95
from tuner.front import normalised_hypervolume

__all__ = ["UNSAMPLED_TOLERANCE", "Reading", "dominated_by", "recent_contender", "recent_gain"]

# A figure with no samples behind it (VRAM read once) counts as "no better" on the front point
# when within this share: two readings of the same server's memory differ by a little.
UNSAMPLED_TOLERANCE = 0.02


@dataclass(frozen=True, slots=True)
class Reading:
    """One objective of one deployment: its value and, when measured from samples, its 95 %
    interval within the deployment (``lo``/``hi`` None: a single reading, such as VRAM)."""

    value: float
    lo: float | None = None
    hi: float | None = None

    @property
    def sampled(self) -> bool:
        """Whether the reading has an interval from samples."""
        return self.lo is not None and self.hi is not None

    def widened(self, cv: float) -> tuple[float, float]:
        """The interval with the between-deployment level added (relative sd ``cv``): each
        side's half-width and ``1.96 x cv x value`` combined in quadrature."""
        between = Z95 * cv * abs(self.value)
        lo = self.value if self.lo is None else self.lo
        hi = self.value if self.hi is None else self.hi
        return (
            self.value - math.hypot(self.value - lo, between),
            self.value + math.hypot(hi - self.value, between),
        )

    def flipped(self) -> Reading:
        """The same reading on a minimised scale (for an objective that is maximised)."""
        lo = None if self.hi is None else -self.hi
        return Reading(-self.value, lo, None if self.lo is None else -self.lo)


def dominated_by(
    trial: Sequence[Reading],
    front: Sequence[tuple[int, Sequence[Reading]]],
    signs: Sequence[int],
    cv: float,
) -> int | None:
    """The first front point (by its number) that ``trial`` is decidedly behind: beyond the
    noise on at least one objective with samples (the whole of the trial's interval beyond
    the whole of the front point's, both widened by ``cv``), and on no objective ahead by more
    than the tie margin on its own figure (``TIE`` for sampled objectives, the smaller
    ``UNSAMPLED_TOLERANCE`` for a single reading such as VRAM). ``signs``: 1 minimise, -1
    maximise. None when no front point is, or no objective has samples to say it.

    Not "behind on every objective": where first turns are salted (MISS cannot hit the cache)
    prefix caching off ties on MISS and VRAM while it is several times slower on HIT, and more
    conversations could only buy it a place on the front by a hair on MISS.
    """
    ours = [r if s > 0 else r.flipped() for r, s in zip(trial, signs, strict=True)]
    if not any(r.sampled for r in ours) or not all(math.isfinite(r.value) for r in ours):
        return None
    for number, readings in front:
        theirs = [r if s > 0 else r.flipped() for r, s in zip(readings, signs, strict=True)]
        verdicts = [_compare(a, b, cv) for a, b in zip(ours, theirs, strict=True)]
        if "ahead" not in verdicts and "behind" in verdicts:
            return number
    return None


def _compare(ours: Reading, theirs: Reading, cv: float) -> str:
    """``behind`` (beyond the noise), ``ahead`` (by more than the margin on the figures) or
    ``level``: ``ours`` against ``theirs``, both minimised."""
    if not math.isfinite(theirs.value):
        return "ahead"
    sampled = ours.sampled and theirs.sampled
    if sampled and ours.widened(cv)[0] > theirs.widened(cv)[1]:
        return "behind"
    margin = (TIE if sampled else UNSAMPLED_TOLERANCE) * abs(theirs.value)
    return "ahead" if ours.value < theirs.value - margin else "level"


def recent_gain(
    values: Sequence[Sequence[float]],
    optimistic: Sequence[Sequence[float]],
    k: int,
    least_span: Sequence[float] | None = None,
) -> float | None:
    """The share of the front's hypervolume that the last ``k`` points added, each at its
    ``optimistic`` end (all objectives minimised, points in the order they were deployed; a
    failed deployment is a row of NaN: it spent a deployment and added nothing). Each
    objective is scaled by its observed range, but by no less than ``least_span`` (what
    deployments of the same flags vary by): differences within the noise are small however
    flat the front. None: nothing earlier to compare with."""
    rows = len(values)
    if rows <= k:
        return None
    ok = [i for i in range(rows) if all(math.isfinite(v) for v in values[i])]
    before = [values[i] for i in ok if i < rows - k]
    after = before + [optimistic[i] for i in ok if i >= rows - k]
    if not before:
        return None
    everything = [*(values[i] for i in ok), *(optimistic[i] for i in ok)]
    dims = len(everything[0])
    lo = [min(p[d] for p in everything) for d in range(dims)]
    hi = [max(p[d] for p in everything) for d in range(dims)]
    if least_span is not None:
        hi = [max(h, low + span) for h, low, span in zip(hi, lo, least_span, strict=True)]
    hv_after = normalised_hypervolume(after, lo, hi)
    if hv_after <= 0:
        return 0.0
    return max(0.0, hv_after - normalised_hypervolume(before, lo, hi)) / hv_after


def recent_contender(values: Sequence[Sequence[float]], k: int, margin: float) -> bool:
    """Whether one of the last ``k`` points is within ``margin`` of the best first objective
    (minimised) of all points: the search is still finding configurations the validation
    could pick, and a front read at the noise's scale does not show it."""
    firsts = [v[0] for v in values if math.isfinite(v[0])]
    if not firsts:
        return False
    best = min(firsts)
    bound = best + margin * abs(best)
    return any(math.isfinite(v[0]) and v[0] <= bound for v in values[-k:])
