"""The study loop, in the shape of Optuna's ``_run_trial``: reap, ask, deploy and measure, tell.

One worker or many run this same loop on one storage, and each turn decides from what storage
holds, never from the process's memory::

    while True:
        reap(study)                    # dead workers' trials: failed, their points queued again
        if stop(study): break          # --trials deployments held, space exhausted, goal, time
        trial = study.ask()            # the proposer: queue, coverage, TPE, fresh neighbour
        run_trial(study, trial, ctx)   # check, deploy, measure, record and tell

``--trials N`` is the number of *deployments* the study holds (``MaxTrialsCallback`` counts
trials the same way): re-running the command resumes an interrupted study up to N; invalid
points (rejected from the flags alone) and duplicates (never deployed) do not count. With N
workers, up to N-1 trials in flight when the target is reached finish past it, and a point two
workers draw in the same instant is measured twice and kept as a replicate (docs/scale-out.md).
"""

from __future__ import annotations

import contextlib
import functools
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict
from enum import StrEnum
from typing import Any

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import TrialState

from tuner.config.objective import ObjectiveFile
from tuner.config.profile import Profile
from tuner.config.rules import violations
from tuner.config.seeds import Seed
from tuner.config.space import ParamValue, SearchSpace
from tuner.deploy import check_profile, cleanup_stale, fixed_params, make_deployer
from tuner.deploy.base import Deployer
from tuner.errors import ConfigError
from tuner.measure.workload import check_fits
from tuner.study._goal import check_goal, goal_met
from tuner.study._run_trial import OnStart, TrialContext, run_trial
from tuner.study._setup import artifact_store, describe
from tuner.study._signals import sigterm_as_interrupt
from tuner.study._stops import settled
from tuner.study._trial import TrialOutcome, evaluate
from tuner.study.propose import Snapshot, enqueue_seeds
from tuner.study.sampling import SamplerContext, SamplerFactory, check_sampler, default_sampler
from tuner.study.settings import RunResult, RunSettings
from tuner.study.storage import StudyPaths, load_study, open_storage, study_lock
from tuner.study.warm import WarmStart, warm_start
from tuner.study.workers import reap, worker_lease
from tuner.trial import Attr, StoredTrial, StudyAttr, deployments

__all__ = ["RunResult", "RunSettings", "Stop", "StudyRunner", "sigterm_as_interrupt"]


class Stop(StrEnum):
    """Why a run of the loop ended."""

    TARGET = "target"  # the study holds --trials deployments
    EXHAUSTED = "exhausted"  # every valid point is evaluated or being measured
    SETTLED = "settled"  # the last deployments could not have moved the front (--settle-after)
    GOAL = "goal"  # --stop-when-met: a trial meets the criteria, precisely enough
    DEADLINE = "deadline"  # --timeout: no new deployment starts


class StudyRunner:
    """Creates or resumes the Optuna study and runs trials until it holds the target."""

    def __init__(
        self,
        *,
        paths: StudyPaths,
        space: SearchSpace,
        seeds: tuple[Seed, ...],
        objective: ObjectiveFile,
        profile: Profile,
        settings: RunSettings,
        deployer_factory: Callable[[Profile], Deployer] | None = None,
        evaluator: Callable[..., TrialOutcome] = evaluate,
        sampler_factory: SamplerFactory = default_sampler,
        on_trial_start: OnStart | None = None,
        on_trial_end: Callable[[TrialOutcome], None] | None = None,
    ) -> None:
        """A runner of the study in ``paths``. ``deployer_factory``, ``evaluator`` and
        ``sampler_factory`` are seams for tests and benchmarks (a surface draw instead of a
        deployment, a timed sampler); ``on_trial_start`` and ``on_trial_end`` let the CLI
        show progress."""
        check_sampler(settings.sampler)  # before anything is created on disk
        self.paths = paths
        self.space = space
        self.seeds = seeds
        self.objective = objective
        self.profile = profile
        self.settings = settings
        self._factory = deployer_factory or functools.partial(
            make_deployer, managed_flags=space.managed_flags
        )
        self._evaluate = evaluator  # benchmarks swap in a surface draw (no HTTP)
        self._sampler_factory = sampler_factory  # benchmarks time or replace the sampler
        self._on_start = on_trial_start
        self._on_end = on_trial_end
        self.reclaimed: list[str] = []  # what cleanup of an earlier killed run removed
        self.warmed: list[WarmStart] = []  # what --warm-start copied or queued
        # The external deployer measures the one configuration its server runs.
        self._fixed = fixed_params(profile, space)
        self._valid_points: dict[str, dict[str, ParamValue]] | None = None

    # -- set-up ---------------------------------------------------------------------------
    @property
    def valid(self) -> dict[str, dict[str, ParamValue]]:
        """Every point of the space the validity rules accept, by key (computed once)."""
        if self._valid_points is None:
            self._valid_points = {
                self.space.key(p): p for p in self.space.points() if not self._invalid(p)
            }
        return self._valid_points

    def _invalid(self, params: dict[str, ParamValue]) -> list[str]:
        """Why vLLM would refuse ``params`` with the profile's fixed arguments."""
        flags = self.space.to_flags(params)
        budget = self.profile.server.kv_budget_problem(flags)
        return violations([*self.profile.server.to_args(), *flags]) + ([budget] if budget else [])

    def open_study(self) -> optuna.Study:
        """Create or load the Optuna study with the proposer as its sampler; refuse one made
        with another space, objectives or settings (``tuner.study._setup``)."""
        # The sampler first: a bad --sampler must not leave an empty study folder behind.
        sampler = self._sampler_factory(
            SamplerContext(
                name=self.settings.sampler,
                space=self.space,
                seed=self.settings.sampler_seed,
                fresh=self.settings.fresh,
                coverage=self.settings.cover_values,
                valid=self.valid,
                streak=self.settings.max_duplicate_streak,
            )
        )
        self.paths.root.mkdir(parents=True, exist_ok=True)
        study = optuna.create_study(
            study_name=self.paths.name,
            storage=open_storage(self.paths.storage_url, heartbeat=self.settings.heartbeat),
            directions=[o.direction for o in self.objective.objectives],
            sampler=sampler,
            load_if_exists=True,
        )
        describe(study, self.paths.name, self.space, self.objective, self.profile,
                 force=self.settings.force, exclusive=self.settings.exclusive,
                 studies=self.paths.root.parent)  # fmt: skip
        return study

    def queue_seeds(self, study: optuna.Study | None = None) -> int:
        """Queue the seeds the study has not measured (or, for the external deployer, its one
        point), once, whatever the number of workers, after what ``--warm-start`` copies or
        queues; how many seed trials were queued. ``tuner optimize --workers N`` calls it under
        the study's lock before the workers start."""
        study = study or self.open_study()
        self._reap(study)  # a dead run's seeds come back to the queue first
        if self.settings.warm_start:  # before the seeds: a related front is queued first
            self.warmed = self._warm(study)
        if self._fixed is not None:
            trials = study.get_trials(deepcopy=False)
            if any(t.state == TrialState.WAITING or StoredTrial(t).evaluated for t in trials):
                return 0
            study.enqueue_trial(self._fixed, user_attrs={Attr.EXTERNAL: True})
            return 1
        return enqueue_seeds(study, self.seeds, self.space)

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> RunResult:
        """Run trials until the study holds its target (``Stop``); resumes where an earlier
        run stopped. KeyboardInterrupt (or SIGTERM) stops the server, marks the trial
        ``interrupted`` and propagates.

        ``tuner optimize`` (``exclusive``) holds the study's lock throughout: a second one on
        this host refuses to start. Workers share the study through its storage.

        Example:
            >>> StudyRunner(paths=p, space=s, seeds=(), objective=o, profile=f,
            ...             settings=RunSettings(n_trials=4)).run().deployed  # doctest: +SKIP
            4
        """
        lock = study_lock(self.paths) if self.settings.exclusive else contextlib.nullcontext()
        with lock, worker_lease(self.paths.root) as run_id:
            return self._run(run_id)

    def _run(self, run_id: str) -> RunResult:
        """The loop: checks before any deployment, the study opened and its dead trials reaped,
        what a killed run left cleaned up, the seeds queued, then trials until a Stop."""
        self._check()
        study = self.open_study()
        self._reap(study)
        # What a hard-killed earlier run left behind, never the servers of running trials.
        keep = [self.paths.trial_dir(t.number) for t in _running(study)]
        self.reclaimed = cleanup_stale(self.profile, self.paths.name, self.paths.root, keep)
        if self.settings.enqueue_seeds or self.settings.warm_start or self._fixed is not None:
            self.queue_seeds(study)
        ctx = self._context(study, run_id)
        outcomes: list[TrialOutcome] = []
        with sigterm_as_interrupt():
            while True:
                self._reap(study)
                stop = self._stop(study)
                if stop is not None:
                    break
                outcomes.append(self._trial(study, ctx))
                if self._on_end is not None:
                    self._on_end(outcomes[-1])
        return self._result(study, outcomes, stop)

    def _warm(self, study: optuna.Study) -> list[WarmStart]:
        """``--warm-start``: copy or queue from the named studies (``tuner.study.warm``),
        found where this study is (its studies folder, or the shared storage)."""
        own = StudyPaths.create(self.paths.name, self.paths.root.parent)
        shared = None if own.storage_url == self.paths.storage_url else self.paths.storage_url
        related = [
            load_study(StudyPaths.create(name, self.paths.root.parent, shared))
            for name in self.settings.warm_start
        ]
        return warm_start(study, self.space, self.valid, related)

    def _check(self) -> None:
        """What would fail every trial is refused before the first deployment."""
        problem = check_fits(self.objective.workload, self.profile.server.max_model_len)
        if problem:
            raise ConfigError(problem)
        check_profile(self.profile, self.space)
        uses = {o.name for o in self.objective.objectives} | {
            b.metric for b in self.objective.constraints
        }
        if "cost_per_mtok" in uses and self.profile.cost is None:
            raise ConfigError(
                f"cost_per_mtok needs the price of the deployment: add `cost: {{gpu_hour: ...}}` "
                f"to the profile {self.profile.name!r}"
            )
        guarded = {"answers_same", "tools_same"} & uses
        if guarded and self.objective.guard is None:
            raise ConfigError(f"{', '.join(sorted(guarded))} needs the answer guard (guard: null)")
        if self.settings.stop_when_met:
            check_goal(self.objective)

    def _stop(self, study: optuna.Study) -> Stop | None:
        """Whether to stop before the next trial, from what storage holds now."""
        trials = study.get_trials(deepcopy=False)
        target = 1 if self._fixed is not None else self.settings.n_trials
        if deployments(trials) >= target:
            return Stop.TARGET
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if self._fixed is None and not waiting:
            snap = Snapshot.read(study, self.space)
            if all(not snap.fresh(key) for key in self.valid):
                return Stop.EXHAUSTED
        if self._settled(study) is not None:
            return Stop.SETTLED
        if self._goal(study) is not None:
            return Stop.GOAL
        deadline = self.settings.deadline
        if deadline is not None and time.monotonic() > deadline:
            return Stop.DEADLINE
        return None

    def _settled(self, study: optuna.Study) -> str | None:
        """Why the search has settled (``tuner.study._stops.settled``), stored with the study
        (the latest verdict: a resumed study may settle again later); None: it has not, or the
        rule is off."""
        if self.settings.settle is None or self._fixed is not None:
            return None
        why = settled(study, self.space, self.valid, self.settings.settle)
        if why is None:
            return None
        study.set_user_attr(StudyAttr.SETTLED, {**asdict(why), "words": why.words()})
        return why.words()

    def _goal(self, study: optuna.Study) -> int | None:
        """--stop-when-met: the trial that meets the goal, once nothing is queued or running
        (the seeds are the user's phase 1; a trial under way may change the answer)."""
        if not self.settings.stop_when_met:
            return None
        if study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)):
            return None
        t = goal_met(study, self.objective)
        if t is None:
            return None
        if StudyAttr.GOAL_MET not in study.user_attrs:
            held = deployments(study.get_trials(deepcopy=False))
            study.set_user_attr(StudyAttr.GOAL_MET, {"trial": t.number, "deployments": held})
        return t.number

    def _trial(self, study: optuna.Study, ctx: TrialContext) -> TrialOutcome:
        """Ask for one trial and run it, beating while it runs (RDB storages): a worker that
        dies stops beating, and after the grace period another fails the trial and retries it."""
        with warnings.catch_warnings():
            # Optuna warns that heartbeats are meant for Study.optimize; this loop is ask/tell
            # and runs the same heartbeat thread optimize runs, below.
            warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
            trial = study.ask()
        with get_heartbeat_thread(trial._trial_id, study._storage):
            return run_trial(study, trial, ctx)

    def _context(self, study: optuna.Study, run_id: str) -> TrialContext:
        """What every trial of this run is run with (``tuner.study._run_trial``)."""
        return TrialContext(
            space=self.space,
            profile=self.profile,
            objective=self.objective,
            make_deployer=self._factory,
            evaluate=self._evaluate,
            trial_dir=self.paths.trial_dir,
            invalid=self._invalid if self.settings.precheck else lambda params: [],
            store=artifact_store(study, self.paths, self.settings),
            worker=run_id,
            slot=self.settings.slot,
            on_start=self._on_start,
            early_stop=self.settings.early_stop,
        )

    def _reap(self, study: optuna.Study) -> None:
        """Dead workers' trials failed, their points queued again (``tuner.study.workers``)."""
        reap(study, self.paths.root, exclusive=self.settings.exclusive)

    def _result(self, study: optuna.Study, outcomes: list[TrialOutcome], stop: Stop) -> RunResult:
        """The run's result, as storage holds the study now."""
        return RunResult(
            self.paths.name,
            deployments(study.get_trials(deepcopy=False)),
            len(outcomes),
            tuple(outcomes),
            stop,
            self._goal(study) if stop == Stop.GOAL else None,
            # the verdict _stop just stored, not computed again
            (study.user_attrs.get(StudyAttr.SETTLED) or {}).get("words")
            if stop == Stop.SETTLED
            else None,
        )


def _running(study: optuna.Study) -> list[Any]:
    """The study's RUNNING trials."""
    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
