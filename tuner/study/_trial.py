"""One trial: deploy, wait healthy, measure, record. Deploy/measure errors become FAIL + reason."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from tuner.config.objective import ObjectiveFile
from tuner.config.profile import Profile
from tuner.deploy.base import Deployer
from tuner.errors import DeployError, MeasureError, ServerExited
from tuner.measure import TrialMeasurement, measure

__all__ = ["TrialOutcome", "evaluate", "record_failure", "write_json"]

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


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)  # never a half-written file after a kill


def record_failure(
    study: optuna.Study,
    trial: optuna.Trial,
    reason: str,
    message: str,
    *,
    log_tail: str = "",
    trial_dir: Path | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """FAIL the trial with ``reason``; the message and log tail go to its user attributes."""
    trial.set_user_attr("reason", reason)
    trial.set_user_attr("error", message[:500])
    if log_tail:
        trial.set_user_attr("log_tail", log_tail[-LOG_TAIL_CHARS:])
    for k, v in (extra or {}).items():
        trial.set_user_attr(k, v)
    if trial_dir is not None:
        write_json(
            trial_dir / "failure.json", {"reason": reason, "error": message, "log_tail": log_tail}
        )
    study.tell(trial, state=TrialState.FAIL)
    log.info("trial=%d state=fail reason=%s error=%s", trial.number, reason, message)


def _baseline(study: optuna.Study, name: str) -> optuna.trial.FrozenTrial | None:
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get("seed_name") == name:
            return t
    return None


def set_constraints(
    study: optuna.Study, trial: optuna.Trial, objective: ObjectiveFile, m: TrialMeasurement
) -> None:
    """The mission's success criteria as Optuna constraints (<= 0 is feasible)."""
    crit = objective.criteria
    if crit is None:
        return
    miss, hit = m.miss.median, m.hit.median
    if trial.user_attrs.get("seed_name") == crit.baseline:
        base_miss, base_hit = miss, hit
    else:
        base = _baseline(study, crit.baseline)
        if base is None:
            trial.set_user_attr("constraints_note", f"no completed {crit.baseline!r} trial yet")
            trial.set_constraint("speedup", crit.min_speedup - m.speedup)
            return
        base_miss = base.user_attrs["ttft_miss_ms"]
        base_hit = base.user_attrs["ttft_hit_ms"]
    trial.set_constraint("miss_vs_baseline", miss / base_miss - crit.miss_max_ratio)
    trial.set_constraint("hit_vs_baseline", hit / base_hit - crit.hit_max_ratio)
    trial.set_constraint("speedup", crit.min_speedup - m.speedup)


def _attrs(m: TrialMeasurement, startup_s: float) -> dict[str, Any]:
    s = m.summary()
    mem = s["memory"]
    return {
        "ttft_miss_ms": m.miss.median,
        "ttft_miss_p90_ms": m.miss.p90,
        "ttft_hit_ms": m.hit.median,
        "ttft_hit_p90_ms": m.hit.p90,
        "ttft_hit_iqr_ms": m.hit.iqr,
        # the spread, so a report can tell a real difference from noise
        "ttft_miss_min_ms": m.miss.min,
        "ttft_miss_max_ms": m.miss.max,
        "ttft_hit_min_ms": m.hit.min,
        "ttft_hit_max_ms": m.hit.max,
        "n_miss": m.miss.n,
        "n_hit": m.hit.n,
        "speedup": m.speedup,
        "gain_pct": m.gain_pct,
        "hit_rate_hit": s["hit_rate_hit"],
        "hit_rate_miss": s["hit_rate_miss"],
        "server_ttft_miss_ms": s["server_ttft_miss_ms"],
        "server_ttft_hit_ms": s["server_ttft_hit_ms"],
        "throughput_tok_s": m.throughput_tok_s,
        "vram_mib": m.memory.vram_mib,
        "vram_source": mem["source"],
        "kv_cache_mib": mem["kv_cache_mib"],
        "kv_cache_tokens": m.kv_cache_tokens,
        "rss_mib": mem["rss_mib"],
        "startup_s": startup_s,
    }


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
) -> TrialOutcome:
    """Deploy ``flags`` and ``env``, measure, tell Optuna; KeyboardInterrupt propagates."""
    t0 = time.perf_counter()
    params = dict(trial.params)
    seed = trial.user_attrs.get("seed_name")

    def outcome(
        state: str, reason: str | None = None, values: tuple[float, ...] = ()
    ) -> TrialOutcome:
        return TrialOutcome(
            number=trial.number,
            params=params,
            state=state,
            reason=reason,
            seed_name=seed,
            values=values,
            deployed=True,
            duration_s=time.perf_counter() - t0,
            attrs=dict(trial.user_attrs),
        )

    attempt = 0
    with make_deployer(profile) as dep:
        while True:
            try:
                endpoint = dep.start(flags, trial_dir, env)
                startup_s = dep.wait_ready()
                m = measure(endpoint, objective.workload, check_alive=dep.check_alive)
                break
            except DeployError as exc:
                tail = exc.log_tail or dep.log_tail()
                if exc.reason == "crash" and attempt < crash_retries:
                    # The mission's procedure: a crash gets one redeploy before the config fails.
                    attempt += 1
                    dep.stop()
                    log_file = trial_dir / "server.log"
                    if log_file.exists():
                        log_file.replace(trial_dir / f"server.attempt{attempt}.log")
                    trial.set_user_attr("crash_retries", attempt)
                    continue
                record_failure(
                    study, trial, exc.reason, str(exc), log_tail=tail, trial_dir=trial_dir
                )
                return outcome("fail", exc.reason)
            except MeasureError as exc:
                reason, message = exc.reason, str(exc)
                try:
                    dep.check_alive()
                except ServerExited as dead:  # the server died under load: that is the cause
                    reason, message = dead.reason, f"{dead} during the workload ({exc})"
                record_failure(
                    study, trial, reason, message, log_tail=dep.log_tail(), trial_dir=trial_dir
                )
                return outcome("fail", reason)

    values: list[float] = []
    for spec in objective.objectives:
        v = startup_s if spec.name == "startup_s" else m.metric(spec.name)
        values.append(v)
    attrs = _attrs(m, startup_s)
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    write_json(
        trial_dir / "measurements.json",
        {
            "trial": trial.number,
            "seed_name": seed,
            "params": params,
            "flags": flags,
            "startup_s": startup_s,
            **m.to_json(),
        },
    )
    if not all(math.isfinite(v) for v in values):
        record_failure(
            study,
            trial,
            "request_error",
            f"non-finite objective values {values}",
            trial_dir=trial_dir,
        )
        return outcome("fail", "request_error")
    set_constraints(study, trial, objective, m)
    study.tell(trial, values)
    log.info("trial=%d state=complete values=%s", trial.number, values)
    return outcome("complete", None, tuple(values))
