"""The tuner's own time per trial: suggest, validity rules, dedup, record, artifacts.

A study runs with the real StudyRunner over a large synthetic space (4 000 points, so 1 000
trials never exhaust it) where each "deployment" is a formula evaluated in microseconds that
still records what a real trial records (user attributes, constraints, measurements.json). What
remains is the tuner's overhead. Storages: SQLite file and Optuna's journal file.

Usage: python benchmarks/overhead.py [--trials 40 1000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import optuna

from tuner.config import FakeConfig, Profile, ServerArgs, load_objective, load_space
from tuner.schema import write_json
from tuner.study import RunSettings, StudyPaths, StudyRunner
from tuner.study.propose import Proposer
from tuner.study.sampling import SamplerContext, default_sampler
from tuner.study._trial import TrialOutcome, record_failure

ROOT = Path(__file__).resolve().parents[1]
SPACE = """\
name: overhead_4000
dimensions:
  gpu_memory_utilization: {values: [0.80, 0.82, 0.84, 0.86, 0.88, 0.90, 0.92, 0.94, 0.95, 0.96], flag: --gpu-memory-utilization}
  max_num_seqs: {values: [null, 8, 16, 32, 48, 64, 96, 128, 192, 256], flag: --max-num-seqs}
  max_num_batched_tokens: {values: [null, 1024, 2048, 3072, 4096, 6144, 8192, 12288, 16384, 32768], flag: --max-num-batched-tokens}
  enable_prefix_caching: {values: [false, true], flag: --enable-prefix-caching, negative_flag: --no-enable-prefix-caching}
  enable_chunked_prefill: {values: [false, true], flag: --enable-chunked-prefill, negative_flag: --no-enable-chunked-prefill}
"""


def evaluate(study: optuna.Study, trial: optuna.Trial, *, flags: list[str], trial_dir: Path,
             **_: Any) -> TrialOutcome:  # fmt: skip
    p = trial.params
    if p["max_num_seqs"] == 256 and p["gpu_memory_utilization"] >= 0.95:
        record_failure(study, trial, "oom", "synthetic", log_tail="x" * 2000, trial_dir=trial_dir)
        return TrialOutcome(trial.number, dict(p), "fail", "oom", deployed=True)
    hit = 60 + 100 * (not p["enable_prefix_caching"]) + (p["max_num_seqs"] or 100) / 10
    miss = 180 + 20 * p["enable_chunked_prefill"] + (p["max_num_batched_tokens"] or 4096) / 1000
    vram = p["gpu_memory_utilization"] * 80000
    for k, v in {"ttft_hit_ms": hit, "ttft_miss_ms": miss, "vram_mib": vram, "n_hit": 9,
                 "hit_rate_hit": 0.9, "startup_s": 50.0}.items():  # fmt: skip
        trial.set_user_attr(k, v)
    write_json(trial_dir / "measurements.json", {"flags": flags, "samples": [{"ttft_ms": hit}] * 12})
    study.tell(trial, [hit, miss, vram])
    return TrialOutcome(trial.number, dict(p), "complete", None, values=(hit, miss, vram), deployed=True)


class _TimedSampler(optuna.samplers.BaseSampler):
    """The default sampler (the proposer around multivariate TPE), timing its proposals apart
    from the rest."""

    spent: list[float] = []

    def __init__(self, inner: optuna.samplers.BaseSampler) -> None:
        self.inner = inner

    def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Any, trial: Any, search_space: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self.inner.sample_relative(study, trial, search_space)
        finally:
            self.spent.append(time.perf_counter() - t0)

    def sample_independent(self, study: Any, trial: Any, name: str, dist: Any) -> Any:
        return self.inner.sample_independent(study, trial, name, dist)

    def before_trial(self, study: Any, trial: Any) -> None:
        self.inner.before_trial(study, trial)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        self.inner.after_trial(study, trial, state, values)


def run(storage: str, n: int, tmp: Path) -> tuple[list[float], list[float]]:
    """Seconds per trial, and of those, seconds in the sampler's proposal."""
    _TimedSampler.spent = []

    def timed(ctx: SamplerContext) -> optuna.samplers.BaseSampler:
        inner = default_sampler(ctx)
        assert isinstance(inner, Proposer)
        return _TimedSampler(inner)

    (tmp / "space.yaml").write_text(SPACE)
    space = load_space(tmp / "space.yaml")
    url = {"sqlite": f"sqlite:///{tmp / 'study.db'}", "journal": f"journal:///{tmp / 'journal.log'}"}[storage]
    times: list[float] = []
    last = [time.perf_counter()]

    def ended(o: TrialOutcome) -> None:
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    objective = load_objective(ROOT / "objectives" / "agent_multiturn.yaml")
    StudyRunner(
        paths=StudyPaths.create("ovh", tmp, url),
        space=space,
        seeds=(),
        objective=objective.model_copy(update={"criteria": None}),
        profile=Profile(name="o", server=ServerArgs(model="m", max_model_len=2048),
                        deployer=FakeConfig()),  # fmt: skip  (never started: the evaluator is a formula)
        settings=RunSettings(n_trials=n, sampler_seed=0),
        evaluator=evaluate,
        sampler_factory=timed,
        on_trial_end=ended,
    ).run()
    return times, _TimedSampler.spent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, nargs="+", default=[40, 1000])
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rows = []
    print("| storage | trials | ms/trial (median) | first 10 % | last 10 % | p95 | total s "
          "| of which sampler: first 10 % | last 10 % |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for storage in ("sqlite", "journal"):
        for n in args.trials:
            with tempfile.TemporaryDirectory() as tmp:
                t, sampler = run(storage, n, Path(tmp))
            k = max(1, len(t) // 10)
            row = {"storage": storage, "trials": len(t), "median_ms": statistics.median(t) * 1e3,
                   "first_ms": statistics.median(t[:k]) * 1e3, "last_ms": statistics.median(t[-k:]) * 1e3,
                   "p95_ms": sorted(t)[int(0.95 * (len(t) - 1))] * 1e3, "total_s": sum(t),
                   "sampler_first_ms": statistics.median(sampler[:k]) * 1e3,
                   "sampler_last_ms": statistics.median(sampler[-k:]) * 1e3}  # fmt: skip
            rows.append(row)
            print(f"| {storage} | {row['trials']} | {row['median_ms']:.1f} | {row['first_ms']:.1f} | "
                  f"{row['last_ms']:.1f} | {row['p95_ms']:.1f} | {row['total_s']:.1f} | "
                  f"{row['sampler_first_ms']:.1f} | {row['sampler_last_ms']:.1f} |")  # fmt: skip
    out = ROOT / "benchmarks" / "results" / "overhead.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
