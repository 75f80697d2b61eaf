"""Validation phase: redeploy the top candidates and the baseline in interleaved rounds.

A search ranks configurations on one deployment each, measured on the conversations the search
used; deployment-to-deployment variance (the same flags measured 20 ms apart on two
deployments) is invisible there. Validation redeploys each candidate ``rounds`` times, a fresh
deployment every time, interleaved (``A B C base, A B C base, ...``) so that drift of the
machine hits every candidate alike, on held-out conversations (another workload seed). The
trials go to a linked study, ``NAME.validation``, in the same storage: the dashboard shows them
and a killed or interrupted validation resumes where it stopped.

The candidates are the search's pick and the fastest other measured points on HIT, then the
baseline (``tuner.decide.validation_candidates``). Adaptive rounds: with ``extra`` deployments
to spend after the fixed rounds, each further round redeploys only the candidates still within
noise of the fastest (``tuner.decide.tied_candidates``, never the baseline), fastest first,
until one stands alone or the extra deployments are spent. Which candidates are tied is read
from the rounds before the one being planned, so a resumed run plans the same round again.
Every deployment is one trial of the loop the search runs (``tuner.study._run_trial``).
"""

from __future__ import annotations

import functools
import logging
import math
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.config.objective import ObjectiveFile
from tuner.config.profile import Profile
from tuner.config.space import SearchSpace
from tuner.config.workload import held_out
from tuner.decide import (
    NoisePrior,
    ValidationSummary,
    search_order,
    summarize_validation,
    tied_candidates,
    validation_candidates,
)
from tuner.deploy import cleanup_stale, make_deployer
from tuner.deploy.base import Deployer
from tuner.errors import StudyError
from tuner.schema import VALIDATION_SUFFIX, TrialFolder, validation_name
from tuner.study._linked import deploy_point, open_linked, past
from tuner.study._run_trial import TrialContext
from tuner.study._signals import sigterm_as_interrupt
from tuner.study._trial import TrialOutcome, evaluate, fail_stale
from tuner.study.storage import StudyPaths, load_study, study_lock
from tuner.trial import Attr, StoredTrial, StudyAttr, deployments

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

# Validation's default cost: at most a quarter of the search's deployments, the budget the
# decision-quality benchmark holds it to.
EXTRA_SHARE = 0.25


def default_extra(deployed: int, rounds: int, candidates: int, share: float = EXTRA_SHARE) -> int:
    """Adaptive deployments left when validation in all may cost ``share`` of the search's
    ``deployed``: 2 at 40 deployments for 2 rounds of 3 candidates + the baseline, 0 when the
    fixed rounds alone exceed it."""
    return max(0, math.ceil(share * deployed) - rounds * candidates)


@dataclass(frozen=True, slots=True)
class ValidationSettings:
    """How many candidates and rounds, and which conversations (``workload_seed``: None = the
    workload's held-out variant: the synthetic seed + 1, or a trace's holdout split)."""

    top: int = 3  # candidates besides the baseline
    rounds: int = 2
    # further deployments for candidates still tied after ``rounds``; None: what a quarter of
    # the search's deployments leaves (``default_extra``)
    extra: int | None = None
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
    summary: ValidationSummary | None = None  # what the rounds say: the validated pick


class Validator:
    """Runs the validation plan of a search study: its candidates (``candidates``, or
    :func:`tuner.decide.validation_candidates`) over fresh deployments."""

    def __init__(
        self,
        *,
        paths: StudyPaths,
        space: SearchSpace,
        objective: ObjectiveFile,
        profile: Profile,
        settings: ValidationSettings,
        candidates: Sequence[FrozenTrial] | None = None,
        deployer_factory: Callable[[Profile], Deployer] | None = None,
        evaluator: Callable[..., TrialOutcome] = evaluate,
        on_trial_end: Callable[[TrialOutcome], None] | None = None,
    ) -> None:
        """The plan for the search study in ``paths``: its candidates (given, or validation's
        choice), the extra deployments (``settings.extra``, or what a quarter of the search's
        deployments leaves), the held-out workload."""
        self.paths = paths
        self.space = space
        self.profile = profile
        self.settings = settings
        self.search = load_study(paths)
        if candidates is None:
            candidates = validation_candidates(self.search, paths.root, settings.top)
        if not candidates:
            raise StudyError("nothing to validate: the study has no completed trial")
        self.candidates = list({c.number: c for c in candidates}.values())  # once each
        self.extra = settings.extra
        if self.extra is None:
            held = deployments(self.search.get_trials(deepcopy=False))
            self.extra = default_extra(held, settings.rounds, len(self.candidates))
        workload = held_out(objective.workload)
        if settings.workload_seed is not None:
            if settings.workload_seed == objective.workload.seed:
                raise StudyError("validation must use held-out conversations: another seed")
            workload = workload.model_copy(update={"seed": settings.workload_seed})
        self.objective = objective.model_copy(update={"workload": workload})
        self._ctx = TrialContext(
            space=space,
            profile=profile,
            objective=self.objective,
            make_deployer=deployer_factory
            or functools.partial(make_deployer, managed_flags=space.managed_flags),
            evaluate=evaluator,
            trial_dir=lambda n: TrialFolder.of(paths.root / "validation", n).path,
            check_measured=False,  # every round is a fresh deployment of a measured point
        )
        self._on_end = on_trial_end

    def plan(self) -> list[tuple[int, FrozenTrial]]:
        """(round, candidate) in the order they are deployed: round after round."""
        return [(r, c) for r in range(self.settings.rounds) for c in self.candidates]

    def open_study(self) -> optuna.Study:
        """Create or load ``NAME.validation`` next to the search study."""
        w, criteria = self.objective.workload, self.objective.criteria
        attrs: dict[str, Any] = {
            StudyAttr.SEARCH_STUDY: self.paths.name,
            StudyAttr.PHASE: "validation",
            StudyAttr.ROUNDS: self.settings.rounds,
            StudyAttr.WORKLOAD_SEED: w.seed,
            StudyAttr.WORKLOAD: w.model_dump(mode="json"),
        }
        if criteria is not None:
            attrs[StudyAttr.CRITERIA] = criteria.model_dump()
        return open_linked(self.paths, validation_name(self.paths.name), self.objective, attrs)

    def run(self) -> ValidationResult:
        """Deploy what the plan still lacks; Ctrl-C / SIGTERM stop it, resumable."""
        with study_lock(self.paths):
            return self._run()

    def _run(self) -> ValidationResult:
        """Deploy the fixed rounds' missing deployments, then the adaptive rounds; the result
        with the validation's verdict."""
        study = self.open_study()
        fail_stale(study)
        # Servers or containers a hard-killed earlier run (search or validation) left behind.
        cleanup_stale(self.profile, self.paths.name, self.paths.root)
        # Done: measured, or failed on the configuration's account; an interrupted deployment
        # or one the machine failed is redone.
        done = {
            (t.user_attrs.get(Attr.ROUND), t.user_attrs.get(Attr.CANDIDATE))
            for t in study.get_trials(deepcopy=False)
            if t.state == TrialState.COMPLETE or StoredTrial(t).is_failure
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
        ordered, _, _ = search_order(self.search, self.paths.root)
        summary = summarize_validation(
            self.search, study, self.paths.root, ordered[0].number if ordered else None
        )
        self._keep_noise(summary)
        return ValidationResult(
            study.study_name, len(plan) + extra, finished + extra, tuple(outcomes), late, summary
        )

    def _keep_noise(self, summary: ValidationSummary) -> None:
        """What this study's rounds measured of the variation between deployments, kept as
        this machine's prior for the next study here (unless a prior of more deployments is
        kept already)."""
        noise = summary.noise
        if noise is None or noise.own is None or noise.own_dof < 2:
            return
        studies = self.paths.root.parent
        kept = NoisePrior.load(studies, self.profile.deployer.kind)
        if kept is not None and kept.deployments > noise.own_dof + 1:
            return
        NoisePrior(noise.own, noise.own_dof + 1, self.objective.workload.timing,
                   socket.gethostname(), self.profile.deployer.kind, time.strftime("%Y-%m-%d"),
                   f"validation of study {self.paths.name}").save(studies)  # fmt: skip

    def _adaptive(
        self, study: optuna.Study, done: set[tuple[Any, Any]], outcomes: list[TrialOutcome]
    ) -> bool:
        """Rounds of the still-tied candidates until one stands alone or ``extra`` is spent;
        True when the deadline stopped them."""
        extra = self.extra or 0
        if extra <= 0:
            return False
        by_number = {c.number: c for c in self.candidates}
        rnd = self.settings.rounds
        while True:
            spent = self._spent(done)
            tied = [
                n
                for n in tied_candidates(self.search, study, self.paths.root, rnd)
                if n in by_number
            ]
            if len(tied) < 2 or spent >= extra:
                return False
            for number in tied:
                if (rnd, number) in done:
                    continue
                if spent >= extra:
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
        """Whether ``--timeout`` has passed: no new deployment starts."""
        return past(self.settings.deadline)

    def _deploy(
        self,
        study: optuna.Study,
        rnd: int,
        cand: FrozenTrial,
        done: set[tuple[Any, Any]],
        outcomes: list[TrialOutcome],
    ) -> None:
        """One deployment of ``cand`` in round ``rnd``, noted as done and reported."""
        out = self._one(study, rnd, cand)
        done.add((rnd, cand.number))
        outcomes.append(out)
        if self._on_end is not None:
            self._on_end(out)

    def _one(self, study: optuna.Study, rnd: int, cand: FrozenTrial) -> TrialOutcome:
        """A fresh deployment of ``cand``'s point in round ``rnd``, run as any trial is run."""
        attrs: dict[str, Any] = {
            Attr.PHASE: "validation",
            Attr.ROUND: rnd,
            Attr.CANDIDATE: cand.number,
        }
        seed = StoredTrial(cand).seed_name
        if seed:
            attrs[Attr.SEED_NAME] = seed
        log.info("validation round=%d candidate=%d", rnd, cand.number)
        return deploy_point(study, cand.params, attrs, self._ctx)
