"""Hypervolume of a front, min-max normalised: how much of the true front a search found."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from optuna._hypervolume import compute_hypervolume  # no public API for it in Optuna 5.0

__all__ = ["normalised_hypervolume"]


def normalised_hypervolume(
    points: Sequence[Sequence[float]],
    lo: Sequence[float],
    hi: Sequence[float],
    reference: float = 1.1,
) -> float:
    """Hypervolume (all objectives minimised) of ``points`` after mapping ``lo``..``hi`` to
    0..1 per objective, against the reference point (``reference``, ...)."""
    if len(points) == 0:
        return 0.0
    low, span = np.asarray(lo, float), np.asarray(hi, float) - np.asarray(lo, float)
    span[span == 0] = 1.0
    pts = (np.asarray(points, float) - low) / span
    return float(compute_hypervolume(pts, np.full(pts.shape[1], reference)))
