"""``tuner noise``: one configuration deployed K times, to see what a fresh deployment moves.

Every decision the tuner makes compares configurations measured on different deployments, so
it must know how far two deployments of the *same* flags land apart on this machine. This runs
K fresh deployments of one configuration for each load timing, interleaved (closed, timetable,
closed, timetable, ...) so that the machine's drift hits both alike, all on the same
conversations. The timetable is sized to the closed loop's load from the first closed
deployment (its conversations' arrival gaps and turn gaps), so that both see about the same
requests in flight. The trials go to a linked study ``NAME.noise`` in the study's storage:
resumable, and visible in the dashboard. The spread per timing comes from
``tuner.decide.noise``; the closed loop's (or the timetable's, when it is the workload's own)
becomes the machine's prior for later studies.
"""

from __future__ import annotations

import functools
import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from tuner.config.objective import ObjectiveFile
from tuner.config.profile import Profile
from tuner.config.space import ParamValue, SearchSpace
from tuner.decide.noise import Spread, spread
from tuner.deploy import make_deployer
from tuner.deploy.base import Deployer
from tuner.errors import StudyError
from tuner.schema import TrialFolder
from tuner.study._linked import deploy_point, open_linked, past
from tuner.study._run_trial import TrialContext
from tuner.study._signals import sigterm_as_interrupt
from tuner.study._trial import TrialOutcome, evaluate, fail_stale
from tuner.study.storage import StudyPaths, study_lock
from tuner.trial import Attr, StoredTrial, StudyAttr

__all__ = ["NOISE_SUFFIX", "NoiseResult", "NoiseRun", "NoiseSettings", "size_timetable"]

log = logging.getLogger("tuner.study")

NOISE_SUFFIX = ".noise"
TIMINGS = ("closed", "timetable")
# The metrics whose spread is reported: what the default objectives rank on.
METRICS_SHOWN = ("ttft_hit_ms", "ttft_miss_ms", "itl_ms")


@dataclass(frozen=True, slots=True)
class NoiseSettings:
    """How many fresh deployments per timing, and which timings."""

    deployments: int = 4
    timings: tuple[str, ...] = TIMINGS
    deadline: float | None = None  # time.monotonic() after which no deployment starts


@dataclass(frozen=True, slots=True)
class NoiseResult:
    """What the deployments measured: the spread per timing and metric, the timetable used."""

    study_name: str
    spreads: tuple[Spread, ...]
    gaps: tuple[float, float] | None  # the timetable's (arrival_gap_s, turn_gap_s)
    done: int
    planned: int


def size_timetable(folder: TrialFolder) -> tuple[float, float]:
    """(arrival gap, turn gap) of a closed-loop deployment's measured phase: the median gap
    between conversation starts and between a conversation's consecutive turns, so that a
    timetable drawn with them sends about the same load."""
    records = [r for r in folder.read_measurements().samples if r.kind != "warmup"]
    starts = sorted(r.started_s for r in records if r.turn == 0)
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    by_conv: dict[int, list[float]] = {}
    for r in records:
        by_conv.setdefault(r.conversation, []).append(r.started_s)
    turns = [
        b - a for xs in by_conv.values() for a, b in zip(sorted(xs), sorted(xs)[1:], strict=False)
    ]
    if not gaps or not turns:
        raise StudyError(f"{folder.path}: too few conversations to size a timetable from")
    return (max(statistics.median(gaps), 1e-3), statistics.median(turns))


class NoiseRun:
    """Deploys ``params`` ``settings.deployments`` times per timing, interleaved, resumable."""

    def __init__(
        self,
        *,
        paths: StudyPaths,
        space: SearchSpace,
        objective: ObjectiveFile,
        profile: Profile,
        params: dict[str, ParamValue],
        settings: NoiseSettings,
        deployer_factory: Callable[[Profile], Deployer] | None = None,
        evaluator: Callable[..., TrialOutcome] = evaluate,
        on_trial_end: Callable[[TrialOutcome], None] | None = None,
    ) -> None:
        """The run for study ``paths`` (its ``NAME.noise`` study holds the deployments)."""
        space.check(params, where="params")
        self.paths, self.space, self.profile = paths, space, profile
        self.objective, self.params, self.settings = objective, dict(params), settings
        self._factory = deployer_factory or functools.partial(
            make_deployer, managed_flags=space.managed_flags
        )
        self._evaluate, self._on_end = evaluator, on_trial_end

    def _context(self, objective: ObjectiveFile) -> TrialContext:
        return TrialContext(
            space=self.space,
            profile=self.profile,
            objective=objective,
            make_deployer=self._factory,
            evaluate=self._evaluate,
            trial_dir=lambda n: TrialFolder.of(self.paths.root / "noise", n).path,
            check_measured=False,  # every deployment is of the same point, on purpose
        )

    def _open(self) -> optuna.Study:
        attrs: dict[str, Any] = {StudyAttr.PHASE: "noise"}
        return open_linked(self.paths, self.paths.name + NOISE_SUFFIX, self.objective, attrs)

    def _objective(self, study: optuna.Study, timing: str) -> ObjectiveFile:
        """The objective with ``timing``: a timetable sized to the closed loop's load."""
        w = self.objective.workload
        if timing == w.timing:
            return self.objective
        if timing == "closed":
            w = w.model_copy(update={"timing": "closed"})
        else:
            gaps = study.user_attrs.get(StudyAttr.TIMETABLE)
            if gaps is None:
                raise StudyError("the timetable is sized from a closed-loop deployment first")
            update = {"timing": "timetable", "arrival_gap_s": gaps[0], "turn_gap_s": gaps[1]}
            w = w.model_copy(update={**update, "concurrency": 1, "rate": None})
        return self.objective.model_copy(update={"workload": w})

    def run(self) -> NoiseResult:
        """Deploy what the plan still lacks (Ctrl-C / SIGTERM stop it, resumable); the spread."""
        with study_lock(self.paths), sigterm_as_interrupt():
            study = self._open()
            fail_stale(study)
            plan = [(r, t) for r in range(self.settings.deployments) for t in self.settings.timings]
            for rnd, timing in plan:
                if self._done(study, rnd, timing) or self._late():
                    continue
                if timing == "timetable" and "timetable" not in study.user_attrs:
                    self._size(study)
                self._deploy(study, rnd, timing)
            return self._result(study, len(plan))

    def _late(self) -> bool:
        return past(self.settings.deadline)

    def _done(self, study: optuna.Study, rnd: int, timing: str) -> bool:
        return any(
            t.user_attrs.get(Attr.ROUND) == rnd
            and t.user_attrs.get(Attr.TIMING) == timing
            and (t.state == TrialState.COMPLETE or StoredTrial(t).is_failure)
            for t in study.get_trials(deepcopy=False)
        )

    def _size(self, study: optuna.Study) -> None:
        """The timetable's gaps from the first measured closed-loop deployment."""
        closed = self._measured(study, "closed")
        if not closed:
            if "closed" not in self.settings.timings:
                self._deploy(study, -1, "closed")  # a sizing deployment, not reported
                closed = self._measured(study, "closed")
            if not closed:
                raise StudyError(
                    "no closed-loop deployment measured: nothing to size a timetable on"
                )
        study.set_user_attr(StudyAttr.TIMETABLE, list(size_timetable(TrialFolder(closed[0]))))

    def _deploy(self, study: optuna.Study, rnd: int, timing: str) -> None:
        attrs: dict[str, Any] = {Attr.PHASE: "noise", Attr.ROUND: rnd, Attr.TIMING: timing}
        log.info("noise round=%d timing=%s", rnd, timing)
        out = deploy_point(study, self.params, attrs, self._context(self._objective(study, timing)))
        if self._on_end is not None:
            self._on_end(out)

    def _measured(self, study: optuna.Study, timing: str) -> list[Path]:
        """The folders of the measured deployments under ``timing``, in order."""
        return [
            Path(str(t.user_attrs[Attr.TRIAL_DIR]))
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get(Attr.TIMING) == timing and Attr.TRIAL_DIR in t.user_attrs
        ]

    def _result(self, study: optuna.Study, planned: int) -> NoiseResult:
        spreads = []
        for timing in self.settings.timings:
            runs = [
                TrialFolder(f).read_measurements().samples for f in self._measured(study, timing)
            ]
            if runs:
                spreads += [spread(runs, m, timing) for m in METRICS_SHOWN]
        done = sum(len(self._measured(study, timing)) for timing in self.settings.timings)
        gaps = study.user_attrs.get(StudyAttr.TIMETABLE)
        sized = (float(gaps[0]), float(gaps[1])) if gaps else None
        return NoiseResult(study.study_name, tuple(spreads), sized, done, planned)
