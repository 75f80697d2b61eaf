"""Feasibility and the Pareto front of stored trials, computed in one place.

The runner's fallback, the report, the recommendation and the CLI all ask the same two
questions of a study's trials (does it meet the success criteria? is it on the front?) and get
their answers here. A trial is feasible when every constraint it recorded is <= 0 (Optuna's
convention, so this agrees with ``study.best_trials``); the front is computed on the trials as
stored, because ``study.best_trials`` deep-copies the whole history on every call.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import optuna
from optuna._hypervolume import compute_hypervolume  # no public API for it in Optuna 5.0
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tuner.trial import Attr

__all__ = [
    "candidate_trials",
    "feasible",
    "measured_trials",
    "nondominated",
    "normalised_hypervolume",
    "pareto_front",
]


def feasible(t: FrozenTrial) -> bool | None:
    """True when every recorded constraint is <= 0; None when the trial recorded none."""
    cons = t.constraints
    return all(v <= 0 for v in cons.values()) if cons else None


def measured_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Completed trials that hold a measurement of their own (not a seed's pointer to another)."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return [t for t in done if Attr.DUPLICATE_OF not in t.user_attrs]


def nondominated(
    trials: Sequence[FrozenTrial], directions: Sequence[StudyDirection]
) -> list[FrozenTrial]:
    """The trials no other trial dominates, in their given order.

    Best sum first: no later point can dominate an earlier one, so one pass against the front
    so far is enough (O(n x front) instead of O(n^2)).
    """
    if not trials:
        return []
    signs = np.array([1.0 if d == StudyDirection.MINIMIZE else -1.0 for d in directions])
    values = np.array([t.values for t in trials], dtype=float) * signs
    front: list[int] = []
    for i in np.argsort(values.sum(axis=1), kind="stable"):
        v = values[i]
        if front:
            f = values[front]
            if ((f <= v).all(axis=1) & (f < v).any(axis=1)).any():
                continue
        front.append(int(i))
    return [trials[i] for i in sorted(front)]


def candidate_trials(study: optuna.Study) -> tuple[list[FrozenTrial], bool]:
    """The feasible measured trials, and True; or, when none is feasible, all measured trials
    and False: what the front, and validation's choice of candidates, are drawn from."""
    done = measured_trials(study)
    ok = [t for t in done if feasible(t) is not False]
    return (ok, True) if ok else (done, False)


def pareto_front(study: optuna.Study) -> tuple[list[FrozenTrial], bool]:
    """The front of the feasible measured trials, and True; or, when none is feasible, the
    front of all measured trials and False (so the user still sees the trade-off).

    Sorted by the first objective. Agrees with ``study.best_trials`` (a test checks it).
    """
    pool, ok = candidate_trials(study)
    front = nondominated(pool, study.directions)
    return sorted(front, key=lambda t: (t.values[0], t.number)), ok


def normalised_hypervolume(
    points: Sequence[Sequence[float]] | np.ndarray,
    lo: Sequence[float] | np.ndarray,
    hi: Sequence[float] | np.ndarray,
    reference: float = 1.1,
) -> float:
    """Hypervolume (all objectives minimised) of ``points`` after mapping ``lo``..``hi`` to
    0..1 per objective, against the reference point (``reference``, ...): how much of the
    objective space a front covers (the benchmarks' score; the coverage's predicted gain)."""
    if len(points) == 0:
        return 0.0
    low, span = np.asarray(lo, float), np.asarray(hi, float) - np.asarray(lo, float)
    span[span == 0] = 1.0
    pts = (np.asarray(points, float) - low) / span
    return float(compute_hypervolume(pts, np.full(pts.shape[1], reference)))
