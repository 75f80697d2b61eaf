"""What one run of a study is asked to do (``RunSettings``, the CLI's options as data) and what
it did (``RunResult``)."""

from __future__ import annotations

from dataclasses import dataclass

from tuner.study._stops import Settle
from tuner.study._trial import TrialOutcome
from tuner.study.storage import Heartbeat

__all__ = ["RunResult", "RunSettings"]


@dataclass(frozen=True, slots=True)
class RunSettings:
    """How one run of a study proceeds (the CLI's options, as data)."""

    n_trials: int = 40
    sampler_seed: int | None = 0
    # A sampler that does not avoid known points (random, NSGA-II): after this many duplicates
    # in a row, an unexplored valid point next to the front.
    max_duplicate_streak: int = 3
    enqueue_seeds: bool = True
    # False deploys points the validity rules reject: to check the rules against a vLLM version.
    precheck: bool = True
    sampler: str = "tpe"  # tpe | tpe-independent | grid (tuner sweep) | random | nsga2
    # Never let the sampler propose a point the study already holds (or a known-invalid one).
    fresh: bool = True
    # time.monotonic() after which no new deployment starts (--timeout); None: no limit.
    deadline: float | None = None
    # Resume even when the space, objective or server differ from the study's (--force).
    force: bool = False
    # Once the seeds are done, give never-deployed dimension values a try on the best point so
    # far and carry a winner across the front (tuner.study._coverage), every other trial
    # (a clear winner's carries back to back); the default TPE only.
    cover_values: bool = True
    # This process holds the study's lock (``tuner optimize``); False for ``tuner worker``,
    # one of several processes sharing the study through its storage.
    exclusive: bool = True
    # Optuna's heartbeats on RDB storages (PostgreSQL, SQLite): a dead worker's trial is
    # failed after the grace period and its point retried. None: off.
    heartbeat: Heartbeat | None = Heartbeat()
    # Which slot of `--workers N --gpus ...` this process is (shown in the dashboard).
    slot: str | None = None
    # The artifact store for the trials' files (a folder or s3://bucket); None: the study's
    # own, else STUDY/artifacts (tuner.study.artifacts). In-memory studies keep none.
    artifacts: str | None = None
    # --stop-when-met: once the seeds are done, stop when a trial meets the success criteria
    # with intervals within the objectives' precision (tuner.study._goal).
    stop_when_met: bool = False
    # --settle-after K: once the seeds are done and every dimension value deployed, end the
    # search when the last K deployments added under `share` of the front's hypervolume, each
    # at the favourable end of its interval (tuner.study._stops). Off by default: on the
    # replayed H100 surface it cost the pick 20 points of "within 5 % of the best"
    # (benchmarks/time_to_pick.py). None: always --trials.
    settle: Settle | None = None
    # A search trial behind the front beyond the noise on every objective stops measuring
    # after workload.decided_after conversations (stop_reason: dominated).
    early_stop: bool = True
    # --warm-start: studies (same studies folder or storage) whose measurements this one
    # starts from (tuner.study.warm): copied when they compare, their front queued when only
    # the model or the workload differs.
    warm_start: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RunResult:
    """What a run did: deployments the study holds, trials it added, each outcome, and why it
    stopped (``tuner.study.runner.Stop``: target, exhausted, settled, goal, deadline)."""

    study_name: str
    deployed: int  # deployments the study holds now
    new_trials: int  # trials created by this run (all states)
    outcomes: tuple[TrialOutcome, ...]
    stop: str = "target"
    goal_met: int | None = None  # --stop-when-met: the trial that met the goal
    settled: str | None = None  # why the search settled before --trials (Stop.SETTLED)

    @property
    def exhausted(self) -> bool:
        """Every valid point of the space is evaluated (or being measured elsewhere)."""
        return self.stop == "exhausted"

    @property
    def stopped_by_deadline(self) -> bool:
        """--timeout came before --trials."""
        return self.stop == "deadline"
