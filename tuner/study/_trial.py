"""One trial in two steps: deploy and measure (no Optuna), then record (no server).

:func:`deploy_and_measure` starts the server, waits until healthy, runs the workload and always
stops what it started; deploy and measure errors come back as a :class:`Failure` value
(failure is data). :func:`record` turns either into Optuna's state: objective values from the
metric table, user attributes, constraints, ``measurements.json`` or ``failure.json``.
:func:`evaluate` is the two together, the runner's default evaluator.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from tuner.answers import Answer
from tuner.config.objective import Guard, ObjectiveFile
from tuner.config.profile import Profile
from tuner.config.workload import SyntheticAgentSpec, TraceSpec
from tuner.deploy import check_model
from tuner.deploy.base import Deployer
from tuner.errors import DeployError, MeasureError, Reason, ServerExited
from tuner.measure import TrialMeasurement, measure
from tuner.measure.guard import answers as ask_guard
from tuner.metrics import METRICS, within_precision
from tuner.schema import MeasurementsDoc, TrialFolder
from tuner.study._judged import is_baseline, judged_attrs
from tuner.study._stops import dominated_stop
from tuner.study.artifacts import ArtifactStore, upload_files
from tuner.trial import Attr, seed_trial

__all__ = [
    "Failure",
    "Measured",
    "TrialOutcome",
    "deploy_and_measure",
    "evaluate",
    "fail_stale",
    "intervals",
    "precise_enough",
    "record",
    "record_failure",
]

log = logging.getLogger("tuner.study")

LOG_TAIL_CHARS = 4000


@dataclass(frozen=True, slots=True)
class TrialOutcome:
    """What the runner reports for each trial (also what the CLI prints, one line each)."""

    number: int
    params: dict[str, Any]
    state: str  # "complete" or "fail"
    reason: str | None = None
    seed_name: str | None = None
    values: tuple[float, ...] = ()
    deployed: bool = False
    duplicate_of: int | None = None
    duration_s: float = 0.0
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a deployment or its measurement failed (a ``tuner.errors.Reason``)."""

    reason: str
    message: str
    log_tail: str = ""


@dataclass(frozen=True, slots=True)
class Measured:
    """What :func:`deploy_and_measure` found: a measurement, or the failure that prevented it."""

    measurement: TrialMeasurement | None
    startup_s: float = 0.0
    failure: Failure | None = None
    crash_retries: int = 0  # redeployments after a crash
    answers: list[Answer] | None = None  # the answer guard's (None: not asked, or it failed)
    guard_note: str = ""  # why the guard has no answers


def record_failure(
    study: optuna.Study,
    trial: optuna.Trial,
    reason: str,
    message: str,
    *,
    log_tail: str = "",
    trial_dir: Path | None = None,
    extra: Mapping[str, Any] | None = None,
    artifacts: ArtifactStore | None = None,
) -> None:
    """FAIL the trial with ``reason``; the message and log tail go to its user attributes,
    the trial folder's files to ``artifacts``."""
    trial.set_user_attr(Attr.REASON, str(reason))
    trial.set_user_attr(Attr.ERROR, message[:500])
    if log_tail:
        trial.set_user_attr(Attr.LOG_TAIL, log_tail[-LOG_TAIL_CHARS:])
    for k, v in (extra or {}).items():
        trial.set_user_attr(k, v)
    if trial_dir is not None:
        TrialFolder(trial_dir).write_failure(reason, message, log_tail)
        _upload(study, trial, trial_dir, artifacts)
    study.tell(trial, state=TrialState.FAIL)
    log.info("trial=%d state=fail reason=%s error=%s", trial.number, reason, message)


def fail_stale(study: optuna.Study) -> None:
    """Mark RUNNING trials ``interrupted``: at start-up they belong to a run killed hard."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial = optuna.Trial(study, t._trial_id)
        record_failure(study, trial, Reason.INTERRUPTED, "the run holding this trial was killed")


def set_constraints(
    study: optuna.Study, trial: optuna.Trial, objective: ObjectiveFile, m: TrialMeasurement
) -> None:
    """The mission's success criteria as Optuna constraints (<= 0 is feasible)."""
    crit = objective.criteria
    if crit is None:
        return
    miss, hit = m.miss.median, m.hit.median
    if is_baseline(trial, objective):
        base_miss, base_hit = miss, hit
    else:
        base = seed_trial(study.get_trials(deepcopy=False), crit.baseline)
        if base is None:
            trial.set_user_attr(Attr.CONSTRAINTS_NOTE, f"no completed {crit.baseline!r} trial yet")
            trial.set_constraint("speedup", crit.min_speedup - m.speedup)
            return
        base_miss = base.user_attrs["ttft_miss_ms"]
        base_hit = base.user_attrs["ttft_hit_ms"]
    trial.set_constraint("miss_vs_baseline", miss / base_miss - crit.miss_max_ratio)
    trial.set_constraint("hit_vs_baseline", hit / base_hit - crit.hit_max_ratio)
    trial.set_constraint("speedup", crit.min_speedup - m.speedup)


def set_bounds(trial: optuna.Trial, objective: ObjectiveFile, attrs: Mapping[str, Any]) -> None:
    """The objective file's ``constraints`` (min/max on a metric) as Optuna constraints.

    Normalised by the bound so that a constraint's value reads as a relative violation; an
    unmeasured metric (NaN) violates it.
    """
    for b in objective.constraints:
        v = float(attrs.get(b.metric, math.nan))
        if b.min is not None:
            gap = (b.min - v) / abs(b.min) if b.min else b.min - v
            trial.set_constraint(f"{b.metric}>={b.min:g}", gap if math.isfinite(v) else 1.0)
        if b.max is not None:
            gap = (v - b.max) / abs(b.max) if b.max else v - b.max
            trial.set_constraint(f"{b.metric}<={b.max:g}", gap if math.isfinite(v) else 1.0)


def slo_bounds(objective: ObjectiveFile) -> dict[str, tuple[float | None, float | None]]:
    """Each class's (TTFT ms, TPOT ms) SLO from the objective file."""
    return {k: (v.ttft_ms, v.tpot_ms) for k, v in objective.slos.items()}


def intervals(m: TrialMeasurement, seed: int = 0) -> dict[str, list[float]]:
    """95 % bootstrap interval of every sampled metric of the table (seeded: repeatable)."""
    obs = m.observations()
    out: dict[str, list[float]] = {}
    for name, spec in METRICS.items():
        ci = spec.interval(obs, seed=seed)
        if ci is not None and all(math.isfinite(v) for v in ci):
            out[name] = [ci[0], ci[1]]
    return out


def precise_enough(objective: ObjectiveFile) -> Callable[[TrialMeasurement], bool] | None:
    """The adaptive stop for ``measure``: every objective with a ``precision`` has a 95 %
    interval whose half-width is within that fraction of its value. None: no such objective."""
    wanted = [(METRICS[name], p) for name, p in objective.sampled_precisions()]
    if not wanted:
        return None

    def enough(m: TrialMeasurement) -> bool:
        """Whether every objective with a precision is measured precisely enough to stop."""
        obs = m.observations()
        return all(
            within_precision(spec.compute(obs), spec.interval(obs), precision)
            for spec, precision in wanted
        )

    return enough


def _attrs(
    m: TrialMeasurement,
    startup_s: float,
    slos: Mapping[str, tuple[float | None, float | None]],
    s: Mapping[str, Any],
    cis: Mapping[str, list[float]],
) -> dict[str, Any]:
    """Every metric of the table, its interval (``cis``), plus the spread and diagnostics a
    report needs (from ``s``, the measurement's summary)."""
    obs = m.observations(startup_s, slos)
    attrs: dict[str, Any] = {name: spec.compute(obs) for name, spec in METRICS.items()}
    attrs.update({f"ci_{name}": ci for name, ci in cis.items()})
    mem = s["memory"]
    attrs.update(
        {
            "ttft_hit_iqr_ms": m.hit.iqr,
            # the spread, so a report can tell a real difference from noise
            "ttft_miss_min_ms": m.miss.min,
            "ttft_miss_max_ms": m.miss.max,
            "ttft_hit_min_ms": m.hit.min,
            "ttft_hit_max_ms": m.hit.max,
            "n_miss": m.miss.n,
            "n_hit": m.hit.n,
            "gain_pct": m.gain_pct,
            "hit_rate_hit": s["hit_rate_hit"],
            "hit_rate_miss": s["hit_rate_miss"],
            "server_ttft_miss_ms": s["server_ttft_miss_ms"],
            "server_ttft_hit_ms": s["server_ttft_hit_ms"],
            "vram_source": mem["source"],
            "vram_per_gpu_mib": mem.get("per_gpu_mib"),
            "kv_cache_mib": mem["kv_cache_mib"],
            "kv_cache_tokens": m.kv_cache_tokens,
            "rss_mib": mem["rss_mib"],
            "stop_reason": s["stop_reason"],
            "late_ms": s.get("late_ms"),
            "conversations": s["conversations"],
            "distinct_conversations": s.get("distinct_conversations"),
            "concurrency": s["concurrency"],
            "failed_requests": s["failed_requests"],
        }
    )
    return attrs


def deploy_and_measure(
    make_deployer: Callable[[Profile], Deployer],
    profile: Profile,
    *,
    flags: list[str],
    env: dict[str, str] | None,
    trial_dir: Path,
    workload: SyntheticAgentSpec | TraceSpec,
    crash_retries: int,
    enough: Callable[[TrialMeasurement], bool] | None = None,
    decided: Callable[[TrialMeasurement], str | None] | None = None,
    guard: Guard | None = None,
) -> Measured:
    """Start the server, wait until healthy, run the workload; the server is always stopped.

    A crash gets ``crash_retries`` redeployments (the mission's procedure) before it counts; its
    log is kept as ``server.attemptK.log``. KeyboardInterrupt and EnvironmentFault (the
    machine's fault, not the configuration's) propagate, after stopping.
    """
    attempt = 0
    with make_deployer(profile) as dep:
        while True:
            try:
                endpoint = dep.start(profile.server.deployed_flags(flags), trial_dir, env)
                startup_s = dep.wait_ready()
                check_model(endpoint.base_url, endpoint.model)  # the server we started
                m = measure(endpoint, workload, check_alive=dep.check_alive, enough=enough,
                            decided=decided)  # fmt: skip
                answers, note = None, ""
                if guard is not None and m.stop_reason != "dominated":
                    try:  # on the idle server, after the load: one probe at a time
                        answers = ask_guard(endpoint.base_url, endpoint.model, workload, guard)
                    except MeasureError as exc:
                        note = f"guard not run: {exc}"
                return Measured(m, startup_s, crash_retries=attempt, answers=answers,
                                guard_note=note)  # fmt: skip
            except DeployError as exc:
                tail = exc.log_tail or dep.log_tail()
                if exc.reason == Reason.CRASH and attempt < crash_retries:
                    attempt += 1
                    dep.stop()
                    log_file = TrialFolder(trial_dir).server_log
                    if log_file.exists():
                        log_file.replace(trial_dir / f"server.attempt{attempt}.log")
                    continue
                failure = Failure(exc.reason, str(exc), tail)
                return Measured(None, failure=failure, crash_retries=attempt)
            except MeasureError as exc:
                reason, message = exc.reason, str(exc)
                dead = _died(dep)
                if dead is not None:  # the server died under load: that is the cause
                    reason, message = dead.reason, f"{dead} during the workload ({exc})"
                failure = Failure(reason, message, dep.log_tail())
                return Measured(None, failure=failure, crash_retries=attempt)


def _died(dep: Deployer, grace_s: float = 2.0) -> ServerExited | None:
    """Whether the server died, given ``grace_s`` to show it: a killed server's sockets close
    (the client's requests fail) a moment before its process can be seen to have exited."""
    deadline = time.monotonic() + grace_s
    while True:
        try:
            dep.check_alive()
        except ServerExited as dead:
            return dead
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)


def record(
    study: optuna.Study,
    trial: optuna.Trial,
    result: Measured,
    *,
    objective: ObjectiveFile,
    flags: list[str],
    env: dict[str, str] | None,
    trial_dir: Path,
    started: float,
    artifacts: ArtifactStore | None = None,
    price_per_hour: float | None = None,
) -> TrialOutcome:
    """Tell Optuna what ``result`` means for ``trial``; write the trial's files (and upload
    them to ``artifacts``). ``price_per_hour``: the profile's, for ``cost_per_mtok``."""
    params = dict(trial.params)
    seed = trial.user_attrs.get(Attr.SEED_NAME)
    if result.crash_retries:
        trial.set_user_attr(Attr.CRASH_RETRIES, result.crash_retries)

    def outcome(
        state: str, reason: str | None = None, values: tuple[float, ...] = ()
    ) -> TrialOutcome:
        """The trial's outcome as the runner reports it, with its attributes as stored."""
        return TrialOutcome(
            number=trial.number,
            params=params,
            state=state,
            reason=reason,
            seed_name=seed,
            values=values,
            deployed=True,
            duration_s=time.perf_counter() - started,
            attrs=dict(trial.user_attrs),
        )

    m = result.measurement
    if m is None:
        f = result.failure or Failure(Reason.CRASH, "no measurement")
        record_failure(study, trial, f.reason, f.message, log_tail=f.log_tail, trial_dir=trial_dir,
                       artifacts=artifacts)  # fmt: skip
        return outcome("fail", f.reason)
    # The bootstrap intervals and the summary feed both the attributes and measurements.json:
    # computed once.
    summary, cis = m.summary(), intervals(m)
    attrs = _attrs(m, result.startup_s, slo_bounds(objective), summary, cis)
    attrs.update(
        judged_attrs(study, trial, objective, answers=result.answers, guard_note=result.guard_note,
                     price_per_hour=price_per_hour, good_tok_s=m.good_tok_s(slo_bounds(objective)))
    )  # fmt: skip
    values = [float(attrs[spec.name]) for spec in objective.objectives]
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    TrialFolder(trial_dir).write_measurements(
        MeasurementsDoc(
            trial=trial.number,
            seed_name=seed,
            params=params,
            flags=flags,
            env=dict(env or {}),
            startup_s=result.startup_s,
            summary={**summary, "intervals": cis},
            cache_config=m.cache_config,
            samples=list(m.samples),
        )
    )
    if not all(math.isfinite(v) for v in values):
        message = f"non-finite objective values {values}"
        record_failure(study, trial, Reason.REQUEST_ERROR, message, trial_dir=trial_dir,
                       artifacts=artifacts)  # fmt: skip
        return outcome("fail", Reason.REQUEST_ERROR)
    set_constraints(study, trial, objective, m)
    set_bounds(trial, objective, attrs)
    _upload(study, trial, trial_dir, artifacts)
    study.tell(trial, values)
    log.info("trial=%d state=complete values=%s", trial.number, values)
    return outcome("complete", None, tuple(values))


def evaluate(
    study: optuna.Study,
    trial: optuna.Trial,
    *,
    flags: list[str],
    trial_dir: Path,
    profile: Profile,
    objective: ObjectiveFile,
    make_deployer: Callable[[Profile], Deployer],
    crash_retries: int,
    env: dict[str, str] | None = None,
    artifacts: ArtifactStore | None = None,
    early_stop: bool = False,
) -> TrialOutcome:
    """Deploy ``flags`` and ``env``, measure, tell Optuna; KeyboardInterrupt propagates.
    ``early_stop``: the search's dominated stop (``dominated_stop``)."""
    started = time.perf_counter()
    ahead: list[int] = []
    result = deploy_and_measure(
        make_deployer,
        profile,
        flags=flags,
        env=env,
        trial_dir=trial_dir,
        workload=objective.workload,
        crash_retries=crash_retries,
        enough=precise_enough(objective),
        decided=dominated_stop(study, trial, objective, ahead) if early_stop else None,
        guard=objective.guard,
    )
    if ahead:
        trial.set_user_attr(Attr.DOMINATED_BY, ahead[-1])
    return record(
        study, trial, result, objective=objective, flags=flags, env=env, trial_dir=trial_dir,
        started=started, artifacts=artifacts, price_per_hour=profile.price_per_hour,
    )  # fmt: skip


def _upload(
    study: optuna.Study, trial: optuna.Trial, folder: Path, store: ArtifactStore | None
) -> None:
    """The trial's files to the artifact store; a store that fails is noted on the trial, and
    never costs the measurement (the files stay in the trial folder)."""
    if store is None:
        return
    try:
        upload_files(study, trial, folder, store)
    except Exception as exc:  # any store: a bucket, a full or read-only disk
        trial.set_user_attr(Attr.ARTIFACT_ERROR, f"{type(exc).__name__}: {exc}"[:300])
        log.warning("trial=%d artifacts not stored: %s", trial.number, exc)
