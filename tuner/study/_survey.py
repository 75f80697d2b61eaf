"""What the study holds right now, read from storage (never one process's memory).

Several workers may share a study, so every decision that depends on other trials (is this
point measured already? deployed by someone now? how many deployments are done?) reads the
storage again. The read is one ``get_trials`` per trial of the loop: milliseconds against the
minutes of a deployment.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

__all__ = [
    "NOT_EVALUATED",
    "WAITS_FOR",
    "Survey",
    "deployments",
    "evaluated",
    "survey",
    "wait_for_twin",
]

# Not "evaluated": an interrupted trial is retried on resume; a duplicate is only a pointer;
# a trial the environment failed (port taken, engine unreachable, disk full) says nothing of
# its point, nor does one whose point another worker was deploying ("taken"), nor one that
# stepped back because earlier trials already fill the target ("surplus").
NOT_EVALUATED = ("interrupted", "duplicate", "env", "taken", "surplus")
# The user attribute of a seed waiting for another trial of its point: that trial's number.
WAITS_FOR = "waits_for"


def evaluated(t: FrozenTrial) -> bool:
    """The trial measured (or rejected) its point: it counts, and its point is not redone."""
    if t.state == TrialState.COMPLETE:
        return "duplicate_of" not in t.user_attrs
    # A FAIL without a reason was failed by Optuna's heartbeat check: its worker died.
    reason = t.user_attrs.get("reason")
    return t.state == TrialState.FAIL and reason is not None and reason not in NOT_EVALUATED


def _a_deployment(t: FrozenTrial) -> bool:
    """The trial deployed a server and counts towards the study's target of deployments."""
    return evaluated(t) and bool(t.user_attrs.get("deployed"))


def deployments(study: optuna.Study) -> int:
    """Deployments the study holds, as its target (``--trials``) counts them."""
    return sum(_a_deployment(t) for t in study.get_trials(deepcopy=False))


@dataclass(slots=True)
class Survey:
    """Evaluated points (first trial of each), deployments done, and the points deploying now."""

    evaluated: dict[str, FrozenTrial] = field(default_factory=dict)
    deployed: int = 0
    # Every RUNNING trial's number, its parameters drawn or not: one that may still deploy.
    running_numbers: list[int] = field(default_factory=list)
    # Every RUNNING trial with its parameters drawn, by point (several trials may hold one).
    claims: dict[str, list[FrozenTrial]] = field(default_factory=dict)

    @property
    def running(self) -> dict[str, FrozenTrial]:
        """Per point being drawn or deployed, its first RUNNING trial (parameters all set)."""
        return {key: trials[0] for key, trials in self.claims.items()}

    @property
    def under_way(self) -> int:
        """Trials under way now (other workers'): deploying, or drawn and about to decide."""
        return len(self.running_numbers)

    def ahead_of(self, number: int) -> int:
        """Deployments done, plus the RUNNING trials numbered below ``number`` (any of them may
        deploy): the storage numbers trials in order, so of several workers that claim the
        last deployments at once, the earlier trials win and the later ones step back."""
        return self.deployed + sum(n < number for n in self.running_numbers)

    def blocker(self, key: str, number: int) -> FrozenTrial | None:
        """For trial ``number``, a seed at point ``key``: the other trial of the point whose
        outcome it must wait for, or None to go on. It waits for an earlier trial of the
        point, for one deploying it, and for a later one not yet decided (it decides within
        a poll); never for a later seed that waits for it (``WAITS_FOR``): were both to wait,
        neither would ever deploy."""
        for t in self.claims.get(key, ()):
            later_waits = t.number > number and t.user_attrs.get(WAITS_FOR) is not None
            if not later_waits or t.user_attrs.get("deployed"):
                return t
        return None

    def taken(self, key: str) -> FrozenTrial | None:
        """The trial that measured or is deploying the point ``key``, if any."""
        return self.evaluated.get(key) or next(iter(self.claims.get(key, ())), None)


def survey(
    study: optuna.Study,
    key_of: Callable[[dict[str, Any]], str],
    n_params: int,
    *,
    besides: int | None = None,
) -> Survey:
    """The study as storage holds it now; ``besides``: a trial number to leave out (the
    caller's own). A RUNNING trial counts as deploying once all its ``n_params`` are set."""
    out = Survey()
    for t in study.get_trials(deepcopy=False):
        if t.number == besides:
            continue
        if evaluated(t):
            out.evaluated.setdefault(key_of(t.params), t)
            out.deployed += _a_deployment(t)
        elif t.state == TrialState.RUNNING:
            out.running_numbers.append(t.number)
            if len(t.params) == n_params:
                out.claims.setdefault(key_of(t.params), []).append(t)
    return out


def wait_for_twin(
    trial: optuna.Trial,
    key: str,
    now: Survey,
    look: Callable[[], Survey],
    reap: Callable[[], None],
    poll_s: float,
) -> Survey:
    """For a seed ``trial`` at point ``key``, with another seed of the same point (the file
    names both): wait until the other worker's measurement is in, or it no longer blocks
    (``Survey.blocker``), as one worker alone would; returns the last survey. ``look`` reads
    the study again, ``reap`` fails dead workers' trials (the other worker may die)."""
    while key not in now.evaluated:
        other = now.blocker(key, trial.number)
        if other is None:
            if trial.user_attrs.get(WAITS_FOR) is not None:
                trial.set_user_attr(WAITS_FOR, None)  # decided: no longer waits
            break
        if other.number < trial.number and trial.user_attrs.get(WAITS_FOR) != other.number:
            trial.set_user_attr(WAITS_FOR, other.number)  # the earlier one goes on
        time.sleep(poll_s)
        reap()
        now = look()
    return now
