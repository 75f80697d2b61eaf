"""Validation phase: redeploy the top candidates and the baseline in interleaved rounds.

A search ranks configurations on one deployment each, measured on the conversations the search
used; deployment-to-deployment variance (the same flags measured 20 ms apart on two
deployments) is invisible there. Validation redeploys each candidate ``rounds`` times, a fresh
deployment every time, interleaved (``A B C base, A B C base, ...``) so that drift of the
machine hits every candidate alike, on held-out conversations (another workload seed). The
trials go to a linked study, ``NAME.validation``, in the same storage: the dashboard shows them
and a killed or interrupted validation resumes where it stopped.

Adaptive rounds: with ``extra`` deployments to spend after the fixed rounds, each further round
redeploys only the candidates still within noise of the fastest (never the baseline), fastest
first, until one stands alone or the extra deployments are spent. Two deployments each leave
configurations 10-20 % apart tied when one deployment's median moves by 10-30 %; the extra
deployments go where they can still change the pick. Which candidates are tied is the caller's
answer (``tied``: the CLI asks ``tuner.report.validation``), computed from the rounds before the
one being planned, so a resumed run plans the same round again.

Which candidates to validate is the caller's choice (the CLI asks ``tuner.report.recommend``);
what the validation data say is read back by ``tuner.report.validation``.
"""

from __future__ import annotations

import functools
import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.config.objective import ObjectiveFile
from tuner.config.profile import Profile
from tuner.config.space import SearchSpace
from tuner.config.workload import held_out
from tuner.deploy import cleanup_stale, make_deployer
from tuner.deploy.base import Deployer
from tuner.errors import StudyError
from tuner.schema import VALIDATION_SUFFIX, TrialFolder, validation_name
from tuner.study._signals import sigterm_as_interrupt
from tuner.study._trial import TrialOutcome, evaluate, fail_stale, record_failure
from tuner.study.storage import StudyPaths, open_storage, study_lock

__all__ = [
    "EXTRA_SHARE",
    "VALIDATION_SUFFIX",
    "ValidationResult",
    "ValidationSettings",
    "Validator",
    "default_extra",
    "validation_name",
]

log = logging.getLogger("tuner.study")

# Validation's default cost: at most a quarter of the search's deployments (issue 15's bound).
EXTRA_SHARE = 0.25


def default_extra(deployed: int, rounds: int, candidates: int, share: float = EXTRA_SHARE) -> int:
    """Adaptive deployments left when validation in all may cost ``share`` of the search's
    ``deployed``: 2 at 40 deployments for 2 rounds of 3 candidates + the baseline, 0 when the
    fixed rounds alone exceed it."""
    return max(0, math.ceil(share * deployed) - rounds * candidates)


@dataclass(frozen=True, slots=True)
class ValidationSettings:
    """How many rounds, and which conversations (``workload_seed``: None = the workload's
    held-out variant: the synthetic seed + 1, or a trace's holdout split)."""

    rounds: int = 2
    extra: int = 0  # further deployments for candidates still tied after ``rounds``
    workload_seed: int | None = None
    deadline: float | None = None  # time.monotonic() after which no deployment starts


@dataclass(frozen=True, slots=True)
class ValidationResult:
    """What a validation run did: the plan's size, what is done, this run's trials."""

    study_name: str
    planned: int
    done: int
    outcomes: tuple[TrialOutcome, ...]
    stopped_by_deadline: bool = False


class Validator:
    """Runs the validation plan of ``candidates`` (search trial numbers, baseline included)."""

    def __init__(
        self,
        *,
        paths: StudyPaths,
        space: SearchSpace,
        objective: ObjectiveFile,
        profile: Profile,
        candidates: Sequence[FrozenTrial],
        settings: ValidationSettings,
        deployer_factory: Callable[[Profile], Deployer] | None = None,
        evaluator: Callable[..., TrialOutcome] = evaluate,
        on_trial_end: Callable[[TrialOutcome], None] | None = None,
        tied: Callable[[optuna.Study, int], Sequence[int]] | None = None,
    ) -> None:
        if not candidates:
            raise StudyError("nothing to validate: the study has no completed trial")
        self.paths = paths
        self.space = space
        self.profile = profile
        self.candidates = list({c.number: c for c in candidates}.values())  # once each
        self.settings = settings
        workload = held_out(objective.workload)
        if settings.workload_seed is not None:
            if settings.workload_seed == objective.workload.seed:
                raise StudyError("validation must use held-out conversations: another seed")
            workload = workload.model_copy(update={"seed": settings.workload_seed})
        self.objective = objective.model_copy(update={"workload": workload})
        self._factory = deployer_factory or functools.partial(
            make_deployer, managed_flags=space.managed_flags
        )
        self._evaluate = evaluator
        self._on_end = on_trial_end
        # (validation study, round) -> candidate numbers within noise of the fastest on the
        # rounds before it, fastest first; None: no adaptive rounds.
        self._tied = tied

    def plan(self) -> list[tuple[int, FrozenTrial]]:
        """(round, candidate) in the order they are deployed: round after round."""
        return [(r, c) for r in range(self.settings.rounds) for c in self.candidates]

    def open_study(self) -> optuna.Study:
        """Create or load ``NAME.validation`` next to the search study."""
        name = validation_name(self.paths.name)
        study = optuna.create_study(
            study_name=name,
            storage=open_storage(self.paths.storage_url),
            directions=[o.direction for o in self.objective.objectives],
            sampler=optuna.samplers.RandomSampler(seed=0),  # every trial is enqueued
            load_if_exists=True,
        )
        if "search_study" not in study.user_attrs:
            with warnings.catch_warnings():
                # set_metric_names is marked experimental; the dashboard shows the names.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names([o.name for o in self.objective.objectives])
            study.set_user_attr("search_study", self.paths.name)
            study.set_user_attr("phase", "validation")
            study.set_user_attr("rounds", self.settings.rounds)
            study.set_user_attr("workload_seed", self.objective.workload.seed)
            study.set_user_attr("workload", self.objective.workload.model_dump(mode="json"))
            criteria = self.objective.criteria
            if criteria is not None:
                study.set_user_attr("criteria", criteria.model_dump())
        return study

    def run(self) -> ValidationResult:
        """Deploy what the plan still lacks; Ctrl-C / SIGTERM stop it, resumable."""
        with study_lock(self.paths):
            return self._run()

    def _run(self) -> ValidationResult:
        study = self.open_study()
        fail_stale(study)
        # Servers or containers a hard-killed earlier run (search or validation) left behind.
        cleanup_stale(self.profile, self.paths.name, self.paths.root)
        done = {
            (t.user_attrs.get("round"), t.user_attrs.get("candidate"))
            for t in study.get_trials(deepcopy=False)
            if t.state == TrialState.COMPLETE
            or (t.state == TrialState.FAIL and t.user_attrs.get("reason") != "interrupted")
        }
        outcomes: list[TrialOutcome] = []
        plan = self.plan()
        late = False
        with sigterm_as_interrupt():
            for rnd, cand in plan:
                if (rnd, cand.number) in done:
                    continue
                if self._past_deadline():
                    late = True
                    break
                self._deploy(study, rnd, cand, done, outcomes)
            fixed_done = all((r, c.number) in done for r, c in plan)
            if fixed_done and not late:
                late = self._adaptive(study, done, outcomes)
        finished = sum((r, c.number) in done for r, c in plan)
        extra = self._spent(done)
        return ValidationResult(
            study.study_name, len(plan) + extra, finished + extra, tuple(outcomes), late
        )

    def _adaptive(
        self, study: optuna.Study, done: set[tuple[Any, Any]], outcomes: list[TrialOutcome]
    ) -> bool:
        """Rounds of the still-tied candidates until one stands alone or ``extra`` is spent;
        True when the deadline stopped them."""
        if self._tied is None or self.settings.extra <= 0:
            return False
        by_number = {c.number: c for c in self.candidates}
        rnd = self.settings.rounds
        while True:
            spent = self._spent(done)
            tied = [n for n in self._tied(study, rnd) if n in by_number]
            if len(tied) < 2 or spent >= self.settings.extra:
                return False
            for number in tied:
                if (rnd, number) in done:
                    continue
                if spent >= self.settings.extra:
                    return False
                if self._past_deadline():
                    return True
                self._deploy(study, rnd, by_number[number], done, outcomes)
                spent += 1
            rnd += 1

    def _spent(self, done: set[tuple[Any, Any]]) -> int:
        """Deployments done in adaptive rounds (those after the fixed ``rounds``)."""
        return sum(1 for r, _ in done if r is not None and r >= self.settings.rounds)

    def _past_deadline(self) -> bool:
        deadline = self.settings.deadline
        return deadline is not None and time.monotonic() > deadline

    def _deploy(
        self,
        study: optuna.Study,
        rnd: int,
        cand: FrozenTrial,
        done: set[tuple[Any, Any]],
        outcomes: list[TrialOutcome],
    ) -> None:
        out = self._one(study, rnd, cand)
        done.add((rnd, cand.number))
        outcomes.append(out)
        if self._on_end is not None:
            self._on_end(out)

    def _one(self, study: optuna.Study, rnd: int, cand: FrozenTrial) -> TrialOutcome:
        attrs: dict[str, Any] = {"phase": "validation", "round": rnd, "candidate": cand.number}
        seed = cand.user_attrs.get("seed_name")
        if seed:
            attrs["seed_name"] = seed
        study.enqueue_trial(dict(cand.params), user_attrs=attrs)
        trial = study.ask()
        params = {
            d.name: trial.suggest_categorical(d.name, list(d.values)) for d in self.space.dimensions
        }
        flags = self.space.to_flags(params)
        env = self.space.to_env(params)
        folder = TrialFolder.of(self.paths.root / "validation", trial.number)
        trial.set_user_attr("flags", flags)
        trial.set_user_attr("deployed", True)
        trial.set_user_attr("trial_dir", str(folder.path))
        log.info("validation round=%d candidate=%d trial=%d", rnd, cand.number, trial.number)
        try:
            return self._evaluate(
                study,
                trial,
                flags=flags,
                trial_dir=folder.path,
                profile=self.profile,
                objective=self.objective,
                make_deployer=self._factory,
                crash_retries=getattr(self.profile.deployer, "crash_retries", 0),
                env=env,
            )
        except KeyboardInterrupt:
            if study.get_trials(deepcopy=False)[trial.number].state == TrialState.RUNNING:
                record_failure(study, trial, "interrupted", "interrupted by Ctrl-C / SIGTERM")
            raise
