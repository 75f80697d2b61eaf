"""What a trial is judged by beyond its own measurement: its answers against the baseline's
(the answer guard) and what its output costs.

Both need what only the study holds: the baseline seed's stored answers, the profile's price.
They join the trial's attributes before it is told, so that the objective file can make them
objectives (``cost_per_mtok``) or constraints (``{metric: answers_same, min: 0.99}``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import optuna

from tuner.answers import Answer
from tuner.config.objective import ObjectiveFile
from tuner.decide.guard import answers_of, guard_attrs
from tuner.trial import Attr, seed_trial

__all__ = ["cost_per_mtok", "is_baseline", "judged_attrs"]


def cost_per_mtok(price_per_hour: float | None, good_tok_s: float) -> float:
    """Price of a million output tokens at the rate the requests that met their SLOs were
    served; NaN without a price, infinity when none met them."""
    if price_per_hour is None:
        return math.nan
    if good_tok_s <= 0:
        return math.inf
    return price_per_hour / (good_tok_s * 3600.0 / 1e6)


def is_baseline(trial: optuna.Trial, objective: ObjectiveFile) -> bool:
    """Whether ``trial`` is the criteria's baseline seed (by name or alias)."""
    crit = objective.criteria
    if crit is None:
        return False
    a = trial.user_attrs
    return a.get(Attr.SEED_NAME) == crit.baseline or crit.baseline in (
        a.get(Attr.SEED_ALIASES) or ()
    )


def judged_attrs(
    study: optuna.Study,
    trial: optuna.Trial,
    objective: ObjectiveFile,
    *,
    answers: Sequence[Answer] | None,
    guard_note: str,
    price_per_hour: float | None,
    good_tok_s: float,
) -> dict[str, Any]:
    """The guard's attributes (the baseline's own answers are its reference) and the cost."""
    out: dict[str, Any] = {"cost_per_mtok": cost_per_mtok(price_per_hour, good_tok_s)}
    if answers is None:
        if guard_note:
            out[Attr.GUARD_NOTE] = guard_note
        return out
    if is_baseline(trial, objective):
        reference: Sequence[Answer] | None = answers
    else:
        crit = objective.criteria
        base = seed_trial(study.get_trials(deepcopy=False), crit.baseline if crit else None)
        reference = answers_of(base) if base is not None else None
    out.update(guard_attrs(reference, answers))
    return out
