"""Soak: keep the pick under the workload for a while and report drift.

The mission's team saw latencies degrade over long uptimes, which neither the search (one
measurement per deployment) nor validation (fresh deployments) can see. A soak deploys the
picked configuration once and measures it window after window (each window a full workload run
on conversations never sent before, so that drift is not a warming cache) until the duration
has passed. The result (per window: count, HIT and MISS medians, ITL p90, failed requests; and
the drift of the HIT median from the first window to the last, with a bootstrap interval) is
stored with the study (user attribute ``soak``) for the report and the dashboard.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna

from tuner.config.objective import ObjectiveFile
from tuner.config.profile import Profile
from tuner.config.workload import held_out
from tuner.deploy import check_model, make_deployer
from tuner.measure import measure
from tuner.metrics import bootstrap_diff, percentile
from tuner.study._signals import sigterm_as_interrupt
from tuner.trial import Attr, StudyAttr

__all__ = ["SoakResult", "SoakWindow", "soak"]


@dataclass(frozen=True, slots=True)
class SoakWindow:
    """One workload run during the soak."""

    index: int
    started_s: float  # since the server was healthy
    requests: int
    ttft_hit_ms: float
    ttft_miss_ms: float
    itl_p90_ms: float
    failed_requests: int


@dataclass(frozen=True, slots=True)
class SoakResult:
    """The windows, and the HIT median's drift from the first window to the last."""

    trial: int
    flags: list[str]
    seconds: float
    windows: list[SoakWindow]
    drift_ms: float | None  # last window's HIT median - the first's
    drift_interval: tuple[float, float] | None  # 95 % bootstrap interval of that difference

    def as_dict(self) -> dict[str, Any]:
        """As stored with the study; the verdict in words too, so readers need not redo it."""
        return {**asdict(self), "verdict": self.verdict}

    @property
    def verdict(self) -> str:
        """The drift between the first and last window in words: within the noise, or by how
        much with its interval."""
        if self.drift_ms is None or self.drift_interval is None:
            return "fewer than two windows: no drift measured"
        lo, hi = self.drift_interval
        first = self.windows[0].ttft_hit_ms
        if lo <= 0 <= hi:
            return (
                f"no measurable drift over {self.seconds:.0f} s: HIT median "
                f"{self.drift_ms:+.1f} ms [{lo:+.1f}, {hi:+.1f}] from {first:.1f} ms"
            )
        word = "slower" if self.drift_ms > 0 else "faster"
        return (
            f"{word} after {self.seconds:.0f} s: HIT median {self.drift_ms:+.1f} ms "
            f"[{lo:+.1f}, {hi:+.1f}] from {first:.1f} ms ({self.drift_ms / first:+.0%})"
        )


def soak(
    study: optuna.Study,
    trial: optuna.trial.FrozenTrial,
    *,
    profile: Profile,
    objective: ObjectiveFile,
    workdir: Path,
    duration_s: float,
) -> SoakResult:
    """Deploy ``trial``'s configuration once and measure it until ``duration_s`` has passed."""
    flags = list(trial.user_attrs.get(Attr.FLAGS, []))
    env = dict(trial.user_attrs.get(Attr.ENV, {}))
    base = held_out(objective.workload)
    windows: list[SoakWindow] = []
    hits: list[list[float]] = []

    with sigterm_as_interrupt(), make_deployer(profile) as dep:
        ep = dep.start(profile.server.deployed_flags(flags), workdir, env)
        dep.wait_ready()
        check_model(ep.base_url, ep.model)
        t0 = time.monotonic()
        while not windows or time.monotonic() - t0 < duration_s:
            i = len(windows)
            spec = base.model_copy(update={"seed": base.seed + 1000 + i})
            started = time.monotonic() - t0
            m = measure(ep, spec, check_alive=dep.check_alive)
            hit = [s.ttft_ms for s in m.samples if s.kind == "hit"]
            miss = [s.ttft_ms for s in m.samples if s.kind == "miss"]
            itl = [v for s in m.samples if s.kind != "warmup" for v in s.itl_ms]
            hits.append(hit)
            windows.append(
                SoakWindow(i, round(started, 1), len(hit) + len(miss), percentile(hit, 50),
                           percentile(miss, 50), percentile(itl, 90), m.failed_requests)
            )  # fmt: skip
        seconds = time.monotonic() - t0
    drift = interval = None
    if len(windows) >= 2 and hits[0] and hits[-1]:
        drift = windows[-1].ttft_hit_ms - windows[0].ttft_hit_ms
        interval = bootstrap_diff("median", hits[-1], hits[0])
    result = SoakResult(trial.number, flags, round(seconds, 1), windows, drift, interval)
    study.set_user_attr(StudyAttr.SOAK, result.as_dict())
    return result
