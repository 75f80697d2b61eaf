"""The search's early stop (``--stop-when-met``): end the search once its goal is reached.

The mission's own plan ran its 12 strategic configurations as phase 1 and went no further if one
met its goals. Here the goal is met by a measured trial that (1) meets the success criteria
against the baseline measured in the same study (its constraints, ``tuner.front.feasible``) and
(2) was measured precisely enough to say so: for every objective with a ``precision``, the
stored 95 % interval (``ci_<name>``) is no wider than that fraction of the value, each side.
The check runs only once the seeds are done: they are the user's phase 1. The validation that
``tuner optimize`` runs next then redeploys the pick on held-out conversations.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial

from tuner.config.objective import ObjectiveFile
from tuner.errors import ConfigError
from tuner.front import feasible, measured_trials
from tuner.metrics import within_precision

__all__ = ["check_goal", "goal_met", "precise"]


def check_goal(objective: ObjectiveFile) -> None:
    """ConfigError unless the objective file can define the goal: success criteria, and at
    least one objective with a ``precision`` that is measured from samples."""
    if objective.criteria is None:
        raise ConfigError(
            "--stop-when-met needs success criteria in the objective file (criteria:)",
            key="criteria",
        )
    if not objective.sampled_precisions():
        raise ConfigError(
            "--stop-when-met needs a `precision` on at least one sampled objective "
            "(e.g. ttft_hit_ms, precision: 0.05): without it nothing says the trial that "
            "meets the criteria was measured well enough to stop",
            key="objectives",
        )


def precise(t: FrozenTrial, wanted: list[tuple[str, float]]) -> bool:
    """Every wanted objective's stored interval is within ``precision`` x value, each side."""
    for name, precision in wanted:
        value, ci = t.user_attrs.get(name), t.user_attrs.get(f"ci_{name}")
        if not isinstance(value, int | float) or not isinstance(ci, list) or len(ci) != 2:
            return False
        if not within_precision(float(value), (float(ci[0]), float(ci[1])), precision):
            return False
    return True


def goal_met(study: optuna.Study, objective: ObjectiveFile) -> FrozenTrial | None:
    """The first measured trial that meets the success criteria with precise enough intervals
    (None: the goal is not reached, or the objective file cannot define it)."""
    wanted = objective.sampled_precisions()
    if objective.criteria is None or not wanted:
        return None
    for t in measured_trials(study):
        if feasible(t) and precise(t, wanted):
            return t
    return None
