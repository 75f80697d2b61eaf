"""Start a study from what other studies measured (``tuner optimize --warm-start STUDY``).

Two measurements compare when they were made of the same model with the same fixed server
arguments, by the same deployer kind and vLLM build, on the same accelerators, under the same
workload and objectives. :func:`measured_with` is that key; every study stores it when it is
created (``StudyAttr.MEASURED_WITH``), so the studies folder (or the shared storage) is the
store of measurements.

- Same key: every finished trial of the other study whose point is a valid point here is
  copied (``warm_from: STUDY#N``). A measured point is not deployed again, a point that failed
  on its own account (OOM, crash, invalid) is not retried, and neither counts as one of this
  study's deployments (``--trials``).
- Only the model or the workload differs: the other study's figures do not hold here, so none
  is copied; its front's points are queued first, so that the search starts where it ended.
- Anything else differs (another GPU, vLLM build, deployer, server argument, objective): one
  line saying what, and nothing is done.

Copying is idempotent: a resumed study copies nothing twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from tuner.config.objective import ObjectiveFile
from tuner.config.profile import Profile
from tuner.config.space import ParamValue, SearchSpace
from tuner.deploy import build
from tuner.errors import ConfigError
from tuner.front import pareto_front
from tuner.measure.vram import machine
from tuner.trial import Attr, StoredTrial, StudyAttr

__all__ = ["WarmStart", "key_differences", "measured_with", "warm_start"]

# What may differ for a study to be queued from (not copied): its figures are of another
# model or another load, its front still says where good configurations lie.
RELATED = frozenset({"model", "workload"})
# A copied trial's attributes that belong to the run that made it, not to its measurement.
_OWN_RUN = (Attr.DEPLOYED, Attr.WORKER, Attr.SLOT, Attr.SEED_NAME, Attr.SEED_ALIASES,
            Attr.COVERAGE, Attr.CARRIES, Attr.FALLBACK, Attr.RETRY_OF)  # fmt: skip
_CONSTRAINTS = "constraints"  # optuna's system attribute for trial.set_constraint


def measured_with(objective: ObjectiveFile, profile: Profile) -> dict[str, Any]:
    """The key under which this study's measurements compare with another's."""
    args = profile.server.to_args()
    return {
        "model": profile.server.model,
        "server": args[2:],  # the fixed arguments after --model MODEL
        "deployer": profile.deployer.kind,
        "build": build(profile),
        "machine": machine(),
        "workload": json.loads(objective.workload.model_dump_json()),
        "objectives": [o.name for o in objective.objectives],
    }


def key_differences(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> list[str]:
    """The parts of two keys that differ. An unknown build (None) never matches."""
    differ = [k for k in sorted(ours.keys() | theirs.keys()) if ours.get(k) != theirs.get(k)]
    if ours.get("build") is None or theirs.get("build") is None:
        differ = sorted({*differ, "build"})
    return differ


@dataclass(frozen=True, slots=True)
class WarmStart:
    """What ``warm_start`` did, per related study."""

    study: str
    copied: int  # measured points copied (not deployed again)
    failed: int  # failures copied (not retried)
    queued: int  # front points of a related study queued first

    def words(self) -> str:
        """A line for the CLI."""
        if self.queued:
            return f"{self.study}: its front's {self.queued} point(s) queued first"
        return (
            f"{self.study}: {self.copied} measured point(s) and {self.failed} failure(s) "
            "copied, not deployed again"
        )


def warm_start(
    study: optuna.Study,
    space: SearchSpace,
    valid: Mapping[str, dict[str, ParamValue]],
    related: Sequence[optuna.Study],
) -> list[WarmStart]:
    """Copy or queue from each ``related`` study (module docstring); ConfigError, before
    anything is written, for one whose key differs in more than the model or workload."""
    ours = study.user_attrs.get(StudyAttr.MEASURED_WITH) or {}
    plans = []
    for other in related:
        theirs = other.user_attrs.get(StudyAttr.MEASURED_WITH) or {}
        differ = key_differences(ours, theirs)
        if differ and not set(differ) <= RELATED:
            shown = ", ".join(f"{k} ({theirs.get(k)!r} there, {ours.get(k)!r} here)"
                              if k in ("build", "machine", "deployer", "model") else k
                              for k in differ)  # fmt: skip
            raise ConfigError(
                f"--warm-start {other.study_name}: its measurements do not compare with this "
                f"study's: {shown} differ (only the model or the workload may)",
                key="warm-start",
            )
        plans.append((other, bool(differ)))
    return [(_queue if differs else _copy)(study, space, valid, other) for other, differs in plans]


def _copy(
    study: optuna.Study,
    space: SearchSpace,
    valid: Mapping[str, dict[str, ParamValue]],
    other: optuna.Study,
) -> WarmStart:
    """Every evaluated trial of ``other`` at a valid point this study has not evaluated."""
    dists: dict[str, BaseDistribution] = {
        d.name: CategoricalDistribution(list(d.choices)) for d in space.dimensions
    }
    done = other.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
    # interrupted, the machine's fault, a pointer: nothing measured to copy
    evaluated = [t for t in done if StoredTrial(t).evaluated]
    copied = failed = 0
    for t, mark, _point in _untaken(study, space, valid, other, evaluated, queued_too=False):
        study.add_trial(_copy_of(t, dists, mark))
        copied += t.state == TrialState.COMPLETE
        failed += t.state == TrialState.FAIL
    return WarmStart(other.study_name, copied, failed, 0)


def _copy_of(t: FrozenTrial, dists: dict[str, BaseDistribution], mark: str) -> FrozenTrial:
    """``t`` as a trial of this study: its measurement, not the run that made it."""
    attrs = {k: v for k, v in t.user_attrs.items() if k not in _OWN_RUN}
    attrs[Attr.WARM_FROM] = mark
    system = {_CONSTRAINTS: t.system_attrs[_CONSTRAINTS]} if _CONSTRAINTS in t.system_attrs else {}
    return create_trial(
        state=t.state,
        values=t.values if t.state == TrialState.COMPLETE else None,
        params=dict(t.params),
        distributions=dists,
        user_attrs=attrs,
        system_attrs=system,
    )


def _queue(
    study: optuna.Study,
    space: SearchSpace,
    valid: Mapping[str, dict[str, ParamValue]],
    other: optuna.Study,
) -> WarmStart:
    """The other study's front points, queued ahead of everything else not yet queued."""
    front, _ = pareto_front(other)
    queued = 0
    for _t, mark, key in _untaken(study, space, valid, other, front, queued_too=True):
        study.enqueue_trial(dict(valid[key]), user_attrs={Attr.WARM_FROM: mark})
        queued += 1
    return WarmStart(other.study_name, 0, 0, queued)


def _untaken(
    study: optuna.Study,
    space: SearchSpace,
    valid: Mapping[str, dict[str, ParamValue]],
    other: optuna.Study,
    trials: Sequence[FrozenTrial],
    *,
    queued_too: bool,
) -> Iterator[tuple[FrozenTrial, str, str]]:
    """(trial, ``STUDY#N`` mark, point key) of ``other``'s ``trials`` at valid points this study
    has neither taken from it already nor evaluated (nor, ``queued_too``, queued or running);
    each point once, whatever the caller then does with it."""
    have, known = _held(study, space, queued_too=queued_too)
    for t in trials:
        mark, key = f"{other.study_name}#{t.number}", _key(space, t)
        if mark in have or key is None or key not in valid or key in known:
            continue
        known.add(key)
        yield t, mark, key


def _held(
    study: optuna.Study, space: SearchSpace, *, queued_too: bool
) -> tuple[set[str], set[str]]:
    """What this study already took from other studies (``STUDY#N`` marks), and the points it
    has evaluated (and, ``queued_too``, queued or running)."""
    mine = study.get_trials(deepcopy=False)
    have = {str(t.user_attrs.get(Attr.WARM_FROM)) for t in mine if Attr.WARM_FROM in t.user_attrs}
    busy = (TrialState.WAITING, TrialState.RUNNING) if queued_too else ()
    known = {space.key(t.params) for t in mine if StoredTrial(t).evaluated or t.state in busy}
    return have, known


def _key(space: SearchSpace, t: FrozenTrial) -> str | None:
    """The point's key in ``space``, or None when the trial is not a point of it."""
    if set(t.params) != set(space.names):
        return None
    return space.key(t.params)
