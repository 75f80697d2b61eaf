"""The study's one sampler: what to deploy next, decided from what storage holds, nothing else.

:class:`Proposer` is an Optuna sampler composed like ``PartialFixedSampler``: it wraps the
sampler the user chose (TPE by default) and answers, in order:

1. **The queue.** Enqueued trials (seeds, retries of lost trials, the external server's point)
   keep their parameters: Optuna pops WAITING trials before it samples. Seeds are queued once,
   when the study is created or resumed (:func:`enqueue_seeds`); seeds of one point share one
   trial (``seed_aliases``).
2. **Coverage** (the default TPE only): an unseen dimension value's first try, or a winning
   value carried across the front (``tuner.study._coverage``).
3. **The wrapped sampler**, asked a few times for a point that is valid, not measured, not
   queued and not being measured by another worker; TPE's constant liar keeps workers apart.
4. **A fresh neighbour** of the front when it only proposes known points.

Every decision reads the study's trials once per ask (:class:`Snapshot`); nothing is kept in
the process between asks, so workers on other hosts decide from the same facts. Like Optuna's
``BruteForceSampler``, it does not lock: two workers that ask in the same instant may draw the
same point, which is then measured twice and kept as a replicate (the noise model pools it).
"""

from __future__ import annotations

import json
import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from tuner.config.seeds import Seed
from tuner.config.space import ParamValue, SearchSpace
from tuner.errors import Reason
from tuner.front import pareto_front
from tuner.trial import Attr, StoredTrial

__all__ = ["Neighbours", "Proposer", "Snapshot", "enqueue_seeds"]

Params = dict[str, ParamValue]


@dataclass(slots=True)
class Snapshot:
    """The study as storage holds it at one ask, read once.

    ``evaluated``: each evaluated point's first trial; ``busy``: points a queued or running
    trial (parameters all set) is about to measure; ``tried`` and ``carried``: coverage's
    first tries (dimension, value) and the points it proposed to carry a winner to.
    """

    trials: list[FrozenTrial]
    before: int | None = None  # the number of the trial being proposed (left out of trials)
    evaluated: dict[str, FrozenTrial] = field(default_factory=dict)
    busy: set[str] = field(default_factory=set)
    tried: set[tuple[str, str]] = field(default_factory=set)
    carried: set[str] = field(default_factory=set)

    @classmethod
    def read(cls, study: optuna.Study, space: SearchSpace, besides: int | None = None) -> Snapshot:
        """Read ``study`` now, leaving out trial ``besides`` (the one being proposed)."""
        trials = [t for t in study.get_trials(deepcopy=False) if t.number != besides]
        snap = cls(trials, besides)
        n_dims = len(space.dimensions)
        for t in trials:
            complete = len(t.params) == n_dims
            if StoredTrial(t).evaluated:
                snap.evaluated.setdefault(space.key(t.params), t)
            elif t.state in (TrialState.RUNNING, TrialState.WAITING):
                # A queued trial's point is in its fixed parameters until a worker pops it.
                point = t.params if complete else t.system_attrs.get("fixed_params", {})
                if len(point) == n_dims:
                    snap.busy.add(space.key(point))
            mark = t.user_attrs.get(Attr.COVERAGE)
            if mark:
                snap.tried.add((str(mark[0]), str(mark[1])))
            if t.user_attrs.get(Attr.CARRIES) and complete:
                snap.carried.add(space.key(t.params))
        return snap

    @property
    def previous(self) -> FrozenTrial | None:
        """The trial created just before the one being proposed (another worker's may be
        newer: the proposal follows on from what came before it)."""
        older = (t for t in reversed(self.trials) if self.before is None or t.number < self.before)
        return next(older, None)

    def fresh(self, key: str) -> bool:
        """Neither evaluated nor about to be measured by another trial."""
        return key not in self.evaluated and key not in self.busy

    def duplicate_streak(self) -> int:
        """How many of the latest finished trials in a row were duplicates (a sampler that
        keeps re-proposing measured points)."""
        n = 0
        for t in reversed(self.trials):
            if t.state in (TrialState.RUNNING, TrialState.WAITING):
                continue
            if StoredTrial(t).reason != Reason.DUPLICATE:
                break
            n += 1
        return n


class Neighbours:
    """A fresh valid point at the smallest Hamming distance from the current front (a random
    one while there is no front); a replicate only when no point is fresh."""

    def __init__(self, space: SearchSpace, valid: Mapping[str, Params], rng: random.Random) -> None:
        self._space, self._valid, self._rng = space, valid, rng
        self._keys = list(valid)
        self._codes: np.ndarray[Any, Any] | None = None  # encoded on first use

    def _code(self, params: Mapping[str, Any]) -> tuple[int, ...]:
        """Each dimension's value as its index (json.dumps keeps True and 1 apart)."""
        return tuple(
            [json.dumps(v) for v in d.choices].index(json.dumps(params[d.name]))
            for d in self._space.dimensions
        )

    def pick(self, study: optuna.Study, taken: Collection[str]) -> Params:
        """The point; ``taken``: keys measured, rejected, or being measured."""
        keys, n_dims = self._keys, len(self._space.dimensions)
        if self._codes is None:
            self._codes = np.array([self._code(p) for p in self._valid.values()]).reshape(
                len(keys), n_dims
            )
        mask = np.fromiter((k not in taken for k in keys), dtype=bool, count=len(keys))
        if not mask.any():  # another worker took the last fresh point meanwhile: a replicate
            mask[:] = True
        front = [t.params for t in pareto_front(study)[0]]
        if not front:
            return dict(
                self._valid[self._rng.choice([k for k, m in zip(keys, mask, strict=True) if m])]
            )
        targets = np.array([self._code(f) for f in front])
        dist = (self._codes[:, None, :] != targets[None, :, :]).sum(axis=2).min(axis=1)
        dist[~mask] = n_dims + 1
        best = dist.min()
        near = [k for k, d in zip(keys, dist, strict=True) if d == best]
        return dict(self._valid[self._rng.choice(near)])


class Proposer(optuna.samplers.BaseSampler):
    """Proposes whole points of ``space``: the queue, coverage, ``base``, a fresh neighbour.

    ``valid``: every point the validity rules accept, by key (the proposer never proposes
    another). ``fresh``: ask ``base`` up to ``tries`` times for a fresh point, else take a
    neighbour; without it, ``base``'s proposals pass through and a neighbour is taken only
    after ``streak`` duplicates in a row. ``coverage``: a ``tuner.study._coverage.Coverage``.
    """

    def __init__(
        self,
        base: optuna.samplers.BaseSampler,
        space: SearchSpace,
        valid: Mapping[str, Params],
        *,
        fresh: bool = True,
        coverage: Any = None,
        seed: int | None = None,
        tries: int = 4,
        streak: int = 3,
    ) -> None:
        """Wrap ``base`` (see the class); ``seed`` seeds the fallback's choice among equally
        near points."""
        self.base = base
        self._space = space
        self._dists = {d.name: CategoricalDistribution(list(d.choices)) for d in space.dimensions}
        self._valid = valid
        self._near = Neighbours(space, valid, random.Random(seed))
        self._coverage = coverage
        self._fresh, self._tries, self._streak = fresh, tries, streak

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        """The whole space: every point is drawn at once, in ``sample_relative``."""
        return dict(self._dists)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        """The trial's whole point: nothing for a queued trial (its parameters are fixed), else
        coverage's proposal, the wrapped sampler's (fresh, valid), or a fresh neighbour; who
        proposed it is stored on the trial at once."""
        if "fixed_params" in trial.system_attrs or not search_space:
            return {}  # a queued trial: its parameters are fixed
        snap = Snapshot.read(study, self._space, besides=trial.number)
        if self._coverage is not None:
            proposal = self._coverage.turn(study, snap, self._valid)
            if proposal is not None:
                params, attrs = proposal
                _mark(study, trial, attrs)
                return dict(params)
        inner = self.base.infer_relative_search_space(study, trial)
        if not self._fresh:
            if snap.duplicate_streak() < self._streak:
                return dict(self.base.sample_relative(study, trial, inner)) if inner else {}
        else:
            for _ in range(self._tries):
                point = self._draw(study, trial, inner)
                key = self._space.key(point)
                if key in self._valid and snap.fresh(key):
                    return point
        _mark(study, trial, {Attr.FALLBACK: True})
        return self._near.pick(study, snap.evaluated.keys() | snap.busy)

    def _draw(
        self, study: optuna.Study, trial: FrozenTrial, inner: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        """One whole point from the wrapped sampler: its relative proposal, completed with
        independent draws."""
        point = dict(self.base.sample_relative(study, trial, inner)) if inner else {}
        for name, dist in self._dists.items():
            if name not in point:
                point[name] = self.base.sample_independent(study, trial, name, dist)
        # A conditional dimension drawn where it does not exist is dropped (set where it does).
        return self._space.normalize(point) if self._space.conditional else point

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        """What ``sample_relative`` left out is the wrapped sampler's own choice."""
        # Reached for what sample_relative left out (the base's own choice, passed through).
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """The wrapped sampler's own preparation of the trial."""
        self.base.before_trial(study, trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        """The wrapped sampler's bookkeeping (NSGA-II's generations, TPE's none)."""
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        """Reseed the wrapped sampler (Optuna does for each worker process)."""
        self.base.reseed_rng()


def _mark(study: optuna.Study, trial: FrozenTrial, attrs: Mapping[str, Any]) -> None:
    """Store why the trial has its point, at once: another worker's next ask reads it."""
    for k, v in attrs.items():
        study._storage.set_trial_user_attr(trial._trial_id, str(k), v)


def enqueue_seeds(study: optuna.Study, seeds: Sequence[Seed], space: SearchSpace) -> int:
    """Queue every seed the study has not measured or queued yet, in the file's order, once:
    seeds of one point share one trial (the first's name, the others as ``seed_aliases``).
    How many trials were queued.

    A seed whose point another trial measured is still queued: the loop answers it from that
    measurement, so the seed's name keeps its row without a second deployment.
    """
    known: set[str] = set()
    for t in study.get_trials(deepcopy=False):
        view = StoredTrial(t)
        if (
            view.evaluated
            or view.duplicate_of is not None
            or t.state
            in (
                TrialState.WAITING,
                TrialState.RUNNING,
            )
        ):
            known.update(view.seed_names)
    by_point: dict[str, list[Seed]] = {}
    for s in seeds:
        if s.name not in known:
            by_point.setdefault(space.key(s.params), []).append(s)
    for group in by_point.values():
        attrs: dict[str, Any] = {Attr.SEED_NAME: group[0].name}
        if len(group) > 1:
            attrs[Attr.SEED_ALIASES] = [s.name for s in group[1:]]
        study.enqueue_trial(dict(group[0].params), user_attrs=attrs, skip_if_exists=False)
    return len(by_point)
