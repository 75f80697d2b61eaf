"""The study loop: seeds first, then multi-objective TPE; never deploy the same point twice.

``--trials N`` is the number of *deployed* configurations the study should hold: re-running
the same command resumes an interrupted study up to N; invalid points (rejected from the flags
alone, in milliseconds) and duplicates (never deployed) do not count.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import random
import time
import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import FrozenTrial, TrialState

from tuner.config.objective import ObjectiveFile
from tuner.config.profile import ExternalConfig, Profile
from tuner.config.rules import violations
from tuner.config.seeds import Seed
from tuner.config.space import ParamValue, SearchSpace
from tuner.deploy import cleanup_stale, make_deployer
from tuner.deploy.base import Deployer
from tuner.errors import ConfigError, EnvironmentFault
from tuner.measure.workload import check_fits
from tuner.study._coverage import Coverage
from tuner.study._goal import check_goal, goal_met
from tuner.study._setup import artifact_store, check_surface, describe, external_params
from tuner.study._signals import sigterm_as_interrupt
from tuner.study._survey import Survey, evaluated, survey, wait_for_twin
from tuner.study._trial import TrialOutcome, evaluate, record_failure
from tuner.study._undeployed import record_duplicate, record_env_fault, record_not_deployed
from tuner.study.artifacts import ArtifactStore
from tuner.study.sampling import (
    Neighbours,
    SamplerContext,
    SamplerFactory,
    check_sampler,
    default_sampler,
)
from tuner.study.settings import RunResult, RunSettings
from tuner.study.storage import StudyPaths, open_storage, study_lock
from tuner.study.workers import reap, worker_lease

__all__ = ["RunResult", "RunSettings", "StudyRunner", "sigterm_as_interrupt"]

log = logging.getLogger("tuner.study")

_POLL_S = 1.0  # how often a worker waiting for the others' deployments looks again


def _frozen(study: optuna.Study, number: int) -> FrozenTrial:
    # Trial numbers index the study's trials; deepcopy=False avoids copying the whole history.
    return study.get_trials(deepcopy=False)[number]


class StudyRunner:
    """Creates or resumes the Optuna study and runs trials until the target is reached."""

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
        on_trial_start: Callable[[int, dict[str, Any], str | None], None] | None = None,
        on_trial_end: Callable[[TrialOutcome], None] | None = None,
    ) -> None:
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
        self._on_start = on_trial_start
        self._on_end = on_trial_end
        self._rng = random.Random(settings.sampler_seed)
        self._external = isinstance(profile.deployer, ExternalConfig)
        self._evaluate = evaluator  # benchmarks swap in a surface draw (no HTTP)
        self._sampler_factory = sampler_factory  # benchmarks time or replace the sampler
        self.reclaimed: list[str] = []  # what cleanup of an earlier killed run removed
        # Point key -> its trial, for every point measured or rejected; and the valid points.
        self._evaluated: dict[str, FrozenTrial] = {}
        self._running_keys: set[str] = set()  # points other workers are deploying now
        self.run_id = ""  # this worker's id (tuner.study.workers), set by run()
        self._store: ArtifactStore | None = None  # set by open_study()
        self._pending_seeds: list[Seed] = []  # seeds not yet enqueued, in order
        self._coverage = Coverage(space)  # after the seeds: unseen values, carried winners
        self._valid: dict[str, dict[str, ParamValue]] = {}
        self._study: optuna.Study | None = None
        self._near: Neighbours | None = None  # the duplicate fallback, set by run()
        self._target = 0  # deployments the study aims at, set by run()

    # -- study set-up -------------------------------------------------------------------
    def open_study(self) -> optuna.Study:
        """Create or load the Optuna study; refuse one made with another space, objectives or
        settings (``tuner.study._setup``); open its artifact store."""
        directions = [o.direction for o in self.objective.objectives]
        # The sampler first: a bad --sampler must not leave an empty study folder behind.
        sampler = self._sampler_factory(
            SamplerContext(
                name=self.settings.sampler,
                space=self.space,
                seed=self.settings.sampler_seed,
                fresh=self.settings.fresh,
                is_fresh=self._is_fresh,
                fallback=self._neighbour,
            )
        )
        self.paths.root.mkdir(parents=True, exist_ok=True)
        study = optuna.create_study(
            study_name=self.paths.name,
            storage=open_storage(self.paths.storage_url, heartbeat=self.settings.heartbeat),
            directions=directions,
            sampler=sampler,
            load_if_exists=True,
        )
        describe(study, self.paths.name, self.space, self.objective, self.profile,
                 force=self.settings.force, exclusive=self.settings.exclusive)  # fmt: skip
        self._store = artifact_store(study, self.paths, self.settings)
        return study

    def _enqueue_seeds(self, study: optuna.Study) -> None:
        if self._external:
            return
        trials = study.get_trials(deepcopy=False)
        done = {
            t.user_attrs.get("seed_name")
            for t in trials
            if evaluated(t) or "duplicate_of" in t.user_attrs
        }
        waiting = {t.user_attrs.get("seed_name") for t in trials if t.state == TrialState.WAITING}
        # Enqueued one at a time, just before each ask (_next_seed), so that the seeds run in
        # their file's order and a seed interrupted last time runs first on resume (Optuna
        # pops WAITING trials oldest first: enqueued all at once, a retried seed went last).
        self._pending_seeds = [
            s for s in self.seeds if s.name not in done and s.name not in waiting
        ]

    def queue_seeds(self) -> int:
        """For ``--workers N``, before the workers start (under the study's lock): create or
        resume the study, take back the points of dead workers, and queue every seed not yet
        measured, once, whatever the number of workers. How many seeds were queued."""
        study = self.open_study()
        self._reap(study)
        self._enqueue_seeds(study)
        pending, self._pending_seeds = self._pending_seeds, []
        for seed in pending:
            study.enqueue_trial(dict(seed.params), user_attrs={"seed_name": seed.name})
        return len(pending)

    def _next_seed(self, study: optuna.Study) -> None:
        if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return
        if not self._pending_seeds:
            if self.settings.cover_values and self.settings.sampler == "tpe":
                last = study.get_trials(deepcopy=False)[-1:]
                nxt = self._coverage.turn(
                    study, self._valid, self._evaluated, last[0] if last else None
                )
                if nxt is not None:
                    study.enqueue_trial(dict(nxt[0]), user_attrs=nxt[1])
            return
        seed = self._pending_seeds.pop(0)
        study.enqueue_trial(dict(seed.params), user_attrs={"seed_name": seed.name})

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> RunResult:
        """Seeds first, then the sampler, until the study holds ``n_trials`` deployments.

        ``tuner optimize`` (``exclusive``) holds the study's lock throughout: a second one on
        this host refuses to start. Workers (``exclusive`` False) share the study through its
        storage: each counts what storage holds, never deploys a point another one measured or
        is deploying, and takes over the point of a worker that died.

        Resumes where an earlier run stopped; returns early when every valid point of the
        space has been evaluated. KeyboardInterrupt (or SIGTERM) stops the server, marks the
        trial ``interrupted`` and propagates.

        Example:
            >>> StudyRunner(paths=p, space=s, seeds=(), objective=o, profile=f,
            ...             settings=RunSettings(n_trials=4)).run().deployed  # doctest: +SKIP
            4
        """
        lock = study_lock(self.paths) if self.settings.exclusive else contextlib.nullcontext()
        with lock, worker_lease(self.paths.root) as run_id:
            self.run_id = run_id
            return self._run()

    def _run(self) -> RunResult:
        problem = check_fits(self.objective.workload, self.profile.server.max_model_len)
        if problem:
            raise ConfigError(problem)  # before any deployment: every trial would fail on it
        check_surface(self.profile, self.space)
        if self.settings.stop_when_met:
            check_goal(self.objective)  # before any deployment, as every other config error
        fixed = external_params(self.profile, self.space) if self._external else None
        study = self.open_study()
        self._reap(study)  # RUNNING trials of workers that died (a run killed hard)
        # Containers or processes a hard-killed earlier run left behind; never those of the
        # trials other workers are running now.
        keep = [self.paths.trial_dir(t.number) for t in self._running(study)]
        self.reclaimed = cleanup_stale(self.profile, self.paths.name, self.paths.root, keep)
        if self.settings.enqueue_seeds:
            self._enqueue_seeds(study)
        trials = study.get_trials(deepcopy=False)
        if fixed is not None and not any(
            evaluated(t) or t.state == TrialState.WAITING for t in trials
        ):
            study.enqueue_trial(fixed, user_attrs={"external": True})
        target = self._target = 1 if self._external else self.settings.n_trials
        # Keyed once: the exhaustion check and the fallback run every loop.
        valid = {self.space.key(p): p for p in self.space.points() if not self._invalid(p)}
        self._valid, self._study = valid, study
        self._near = Neighbours(self.space, valid, self._rng)
        outcomes: list[TrialOutcome] = []
        streak = 0
        with sigterm_as_interrupt():
            while True:
                self._reap(study)  # a worker that died meanwhile: its point back in the queue
                now = self._look(study)
                if now.deployed >= target:
                    break
                met = self._goal(study)
                if met is not None:
                    study.set_user_attr("goal_met", {"trial": met, "deployments": now.deployed})
                    return self._result(study, now, outcomes, exhausted=False, met=met)
                if not self._external and valid.keys() <= now.evaluated.keys():
                    return self._result(study, now, outcomes, exhausted=True)
                if self.settings.deadline is not None and time.monotonic() > self.settings.deadline:
                    return self._result(study, now, outcomes, exhausted=False, late=True)
                if now.deployed + now.under_way >= target or (
                    not self._external and valid.keys() <= (now.evaluated | now.running).keys()
                ):
                    # Other workers' trials under way may reach the target: wait for them (one
                    # may fail, or its worker die, and its point come back to the queue).
                    time.sleep(_POLL_S)
                    continue
                out = self._one(study)
                outcomes.append(out)
                if self._on_end is not None:
                    self._on_end(out)
                streak = streak + 1 if out.reason in ("duplicate", "taken") else 0
                if streak >= self.settings.max_duplicate_streak:
                    # TPE keeps re-proposing known points (greedy in a small discrete space):
                    # re-sample an unexplored valid point next to the current front.
                    study.enqueue_trial(self._neighbour(), user_attrs={"fallback": True})
                    streak = 0
        return self._result(study, self._look(study), outcomes, exhausted=False)

    def _look(self, study: optuna.Study, besides: int | None = None) -> Survey:
        """The study as storage holds it; the sampler's view of taken points follows it."""
        now = survey(study, self.space.key, len(self.space.dimensions), besides=besides)
        self._evaluated, self._running_keys = now.evaluated, set(now.running)
        return now

    @staticmethod
    def _running(study: optuna.Study) -> list[FrozenTrial]:
        return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))

    def _reap(self, study: optuna.Study) -> None:
        """Dead workers' trials failed, their points re-queued (``tuner.study.workers``)."""
        reap(study, self.paths.root, exclusive=self.settings.exclusive)

    def _neighbour(self) -> dict[str, ParamValue]:
        """An unexplored valid point at the smallest Hamming distance from the current front."""
        assert self._near is not None, "run() sets it first"
        assert self._study is not None
        return self._near.pick(self._study, self._evaluated.keys() | self._running_keys)

    # FreshSampler's hooks: the runner knows which points are measured or invalid.
    def _is_fresh(self, params: dict[str, ParamValue]) -> bool:
        key = self.space.key(params)
        return key in self._valid and key not in self._evaluated and key not in self._running_keys

    def _result(
        self,
        study: optuna.Study,
        now: Survey,
        outcomes: list[TrialOutcome],
        *,
        exhausted: bool,
        late: bool = False,
        met: int | None = None,
    ) -> RunResult:
        return RunResult(
            self.paths.name, now.deployed, len(outcomes), exhausted, tuple(outcomes), late, met
        )

    def _goal(self, study: optuna.Study) -> int | None:
        """The trial that met the goal of ``--stop-when-met``, once the seeds are done."""
        if not self.settings.stop_when_met or self._pending_seeds:
            return None
        if study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)):
            return None  # a seed still queued, or a trial under way that may change the answer
        t = goal_met(study, self.objective)
        return t.number if t is not None else None

    def _server_args(self, params: dict[str, ParamValue]) -> list[str]:
        return [*self.profile.server.to_args(), *self.space.to_flags(params)]

    def _invalid(self, params: dict[str, ParamValue]) -> list[str]:
        return violations(self._server_args(params))

    def _one(self, study: optuna.Study) -> TrialOutcome:
        t0 = time.perf_counter()
        self._next_seed(study)
        with warnings.catch_warnings():
            # Optuna warns that heartbeats are meant for Study.optimize; this loop is ask/tell
            # and runs the same heartbeat thread optimize runs, below.
            warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
            trial = study.ask()
        # Beats while the trial runs (RDB storages): a worker that dies stops beating, and
        # after the grace period any other worker fails the trial and retries its point.
        with get_heartbeat_thread(trial._trial_id, study._storage):
            return self._attempt(study, trial, t0)

    def _attempt(self, study: optuna.Study, trial: optuna.Trial, t0: float) -> TrialOutcome:
        trial.set_user_attr("worker", self.run_id)
        if self.settings.slot:
            trial.set_user_attr("slot", self.settings.slot)
        params: dict[str, ParamValue] = {
            d.name: trial.suggest_categorical(d.name, list(d.values)) for d in self.space.dimensions
        }
        flags = self.space.to_flags(params)
        seed = trial.user_attrs.get("seed_name")
        env = self.space.to_env(params)
        trial.set_user_attr("flags", flags)
        if env:
            trial.set_user_attr("env", env)
        key = self.space.key(params)
        if self._on_start is not None:
            self._on_start(trial.number, params, seed)
        try:
            # Read after this trial's parameters are stored: of two workers that drew the same
            # point at once, at least the later one sees the other's (both may step back).
            now = self._look(study, besides=trial.number)
            if seed:
                now = wait_for_twin(
                    trial,
                    key,
                    now,
                    functools.partial(self._look, study, besides=trial.number),
                    functools.partial(self._reap, study),
                    _POLL_S,
                )
            if key in now.evaluated:
                return record_duplicate(study, trial, now.evaluated[key], params, t0)
            if key in now.running and not seed:
                other = now.running[key]
                why = f"trial {other.number} ({other.user_attrs.get('worker', '?')}) deploys it"
                return record_not_deployed(study, trial, params, "taken", why, t0)
            if now.ahead_of(trial.number) >= self._target:
                why = f"earlier trials fill the target of {self._target} deployments"
                if seed:  # back in the queue: should an earlier trial not deploy, it runs
                    study.enqueue_trial(dict(params), user_attrs={"seed_name": seed})
                return record_not_deployed(study, trial, params, "surplus", why, t0)
            problems = self._invalid(params) if self.settings.precheck else []
            if problems:
                return record_not_deployed(study, trial, params, "invalid", "; ".join(problems), t0)
            trial.set_user_attr("deployed", True)
            trial.set_user_attr("trial_dir", str(self.paths.trial_dir(trial.number)))
            return self._evaluate(
                study,
                trial,
                flags=flags,
                trial_dir=self.paths.trial_dir(trial.number),
                profile=self.profile,
                objective=self.objective,
                make_deployer=self._factory,
                crash_retries=getattr(self.profile.deployer, "crash_retries", 0),
                env=env,
                # only when there is a store: the benchmarks' evaluators take no such argument
                **({"artifacts": self._store} if self._store is not None else {}),
            )
        except KeyboardInterrupt:
            if _frozen(study, trial.number).state == TrialState.RUNNING:
                record_failure(study, trial, "interrupted", "interrupted by Ctrl-C / SIGTERM")
            raise
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            record_env_fault(study, trial, f"disk full: {exc}")
            raise EnvironmentFault(f"disk full while trial {trial.number} ran: {exc}") from exc
        except EnvironmentFault as exc:
            record_env_fault(study, trial, str(exc))
            raise
