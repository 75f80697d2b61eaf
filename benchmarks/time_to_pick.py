"""GPU minutes to a validated pick: the whole `tuner optimize` pipeline on replay surfaces, each
deployment timed as the recorded GPU studies' deployments were.

For each surface, lever and sampler seed: the search through the tuner's own StudyRunner (the
12 seeds, TPE, the stops under test), then validation (tuner.study.Validator, the defaults),
then the recommendation. Each deployment draws its samples as in decision_quality.py (one MISS
and three HIT per conversation, 3 conversations, more until the HIT median is within 5 %, at
most 12; a per-deployment factor N(1, --deployment-noise)) and its time from one deployment of
the recorded GPU studies (h100c8, tp2, h100: start-up, and measurement in proportion to the
conversations measured). The dominated stop asks the product's own rule
(tuner.study._stops.ahead_of) after every conversation from the second.

Levers, side by side on the same seeds (LEVERS): today's defaults before the stops (40
deployments, no stop), the dominated stop alone, the settle stop alone, both (the new defaults),
both with a longer settle window, both with the start-up the H200 measured once bytecode is
cached (modelled: 15.5 s off each start), random search with both, and a warm start (the front
of an earlier study of another model's surface on the same space, under another load, queued
instead of the 12 seeds; that study's own minutes not counted). Prints per surface and lever: GPU minutes to the validated pick (median, p90),
deployments (search + validation), the pick within 5 % of the true best, mean regret.
Writes benchmarks/results/time_to_pick.json.

Usage: python benchmarks/time_to_pick.py [--seeds 10] [--surfaces h100_llama6b synthetic_ties]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decision_quality import BUDGET, ROOT, SURFACES, _surface, truth, write_samples  # noqa: E402

from tuner.config import Profile, ReplayConfig, ServerArgs, load_objective, load_seeds, load_space
from tuner.decide import baseline_trial, validation_candidates
from tuner.decide.stops import Reading
from tuner.metrics import bootstrap_interval
from tuner.report import recommend
from tuner.schema import SurfacePoint, point_key
from tuner.study import (
    RunSettings,
    Settle,
    StudyPaths,
    StudyRunner,
    ValidationSettings,
    Validator,
    default_extra,
    load_study,
)
from tuner.study._stops import ahead_of
from tuner.study._trial import TrialOutcome, record_failure

GPU = ROOT / "benchmarks" / "results" / "gpu"
@dataclass(frozen=True)
class Lever:
    sampler: str = "tpe"
    settle: Settle | None = Settle()
    early_stop: bool = True
    startup_saved_s: float = 0.0  # taken off every recorded start-up (floor 10 s)
    warm: bool = False  # a related study's front queued instead of the seeds


# The bytecode lever: what the H200 measured (benchmarks/results/gpu/bytecode.json), a warm
# start 47.1 s with PYTHONDONTWRITEBYTECODE, 31.6 s without; modelled as the same seconds saved.
BYTECODE_S = 15.5
LEVERS: dict[str, Lever] = {
    "before (40, no stop)": Lever(settle=None, early_stop=False),
    "dominated stop": Lever(settle=None),
    "defaults: dominated stop + bytecode": Lever(settle=None, startup_saved_s=BYTECODE_S),
    "settle stop": Lever(early_stop=False),
    "both": Lever(),
    "both, hypervolume alone": Lever(settle=Settle(contenders=None)),
    "both, settle after 12": Lever(settle=Settle(after=12)),
    "both, settle after 16": Lever(settle=Settle(after=16)),
    "both + bytecode": Lever(startup_saved_s=BYTECODE_S),
    "random + both": Lever(sampler="random"),
    "warm: related front, no seeds": Lever(startup_saved_s=BYTECODE_S, warm=True),
}
# The related study a warm start comes from: another model's surface over the same space.
RELATED = {"h100_llama6b": "synthetic_mission", "synthetic_ties": "h100_llama6b"}
NAMES = ("ttft_hit_ms", "ttft_miss_ms", "vram_mib")


def recorded_times() -> list[tuple[float, float]]:
    """(start-up s, measurement s per conversation) of every deployment the recorded GPU
    studies made, search and validation."""
    out = []
    for folder in ("h100c8", "tp2", "h100"):
        # A copy: opening the committed database would leave its -wal and -shm files behind.
        copy = Path(tempfile.mkdtemp()) / "study.db"
        shutil.copyfile(GPU / folder / "study.db", copy)
        url = f"sqlite:///{copy}"
        for summary in optuna.get_all_study_summaries(url):
            study = optuna.load_study(study_name=summary.study_name, storage=url)
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
                up, conv = t.user_attrs.get("startup_s"), t.user_attrs.get("conversations")
                if up is None or not conv or t.datetime_complete is None or t.datetime_start is None:
                    continue
                total = (t.datetime_complete - t.datetime_start).total_seconds()
                out.append((float(up), max(0.0, total - float(up)) / float(conv)))
    return out


def _reading(xs: list[float]) -> Reading:
    lo, hi = bootstrap_interval("median", xs, resamples=300, seed=len(xs))
    return Reading(statistics.median(xs), lo, hi)


def _evaluator(points: dict[str, SurfacePoint], rng: random.Random, noise: float,
               times: list[tuple[float, float]], spent: list[float],
               saved_s: float = 0.0) -> Any:  # fmt: skip
    def evaluate(study: optuna.Study, trial: optuna.Trial, *, flags: list[str], env: Any = None,
                 trial_dir: Path, early_stop: bool = False, **_: Any) -> TrialOutcome:  # fmt: skip
        p = points.get(point_key(flags, env))
        params = dict(trial.params)
        startup, per_conv = rng.choice(times)
        startup = max(10.0, startup - saved_s)
        if p is None or p.status != "ok":  # a failed start costs its start-up
            spent.append(startup)
            reason = p.status if p else "crash"
            record_failure(study, trial, reason, "replayed failure")
            return TrialOutcome(trial.number, params, "fail", reason, deployed=True)
        ahead = ahead_of(study, trial, list(NAMES)) if early_stop else None
        factor = max(0.3, rng.gauss(1.0, noise))
        hit: list[float] = []
        miss: list[float] = []
        stop, behind = "max_conversations", []
        while len(miss) < 12:
            hit += [x * factor for x in rng.choices(p.hit_ms, k=3)]
            miss += [x * factor for x in rng.choices(p.miss_ms, k=1)]
            if ahead is not None and len(miss) >= 2:
                ours = [_reading(hit), _reading(miss), Reading(p.vram_mib)]
                if ahead.check(ours, behind):
                    stop = "dominated"
                    break
            if len(miss) >= 3:
                h = _reading(hit)
                assert h.lo is not None and h.hi is not None
                if (h.hi - h.lo) / 2 <= 0.05 * h.value:
                    stop = "precision"
                    break
        spent.append(startup + per_conv * len(miss))
        write_samples(trial_dir, trial.number, params, flags, startup, hit, miss)
        h, m = _reading(hit), _reading(miss)
        values = [h.value, m.value, p.vram_mib]
        attrs = {"ttft_hit_ms": h.value, "ttft_miss_ms": m.value, "vram_mib": p.vram_mib,
                 "ci_ttft_hit_ms": [h.lo, h.hi], "ci_ttft_miss_ms": [m.lo, m.hi],
                 "conversations": len(miss), "stop_reason": stop}  # fmt: skip
        if behind:
            attrs["dominated_by"] = behind[-1]
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        study.tell(trial, values)
        return TrialOutcome(trial.number, params, "complete", None, values=tuple(values),
                            deployed=True)  # fmt: skip

    return evaluate


def _related(tmp: Path, name: str, seed: int, space: Any, seeds: Any, objective: Any,
             profile: Profile, noise: float, times: list[tuple[float, float]]) -> None:  # fmt: skip
    """The study a warm start comes from: RELATED[name]'s surface, served with the same
    arguments (its replay file has the same name, so the same build), another workload seed."""
    other = _surface(RELATED[name])
    folder = tmp / "related_surface"
    folder.mkdir()
    (folder / "surface.json").write_text(json.dumps(other.to_json()))
    prof = profile.model_copy(update={"deployer": ReplayConfig(surface=folder / "surface.json")})
    load = objective.workload.model_copy(update={"seed": objective.workload.seed + 100})
    StudyRunner(paths=StudyPaths.create("related", tmp), space=space, seeds=tuple(seeds),
                objective=objective.model_copy(update={"workload": load}), profile=prof,
                settings=RunSettings(n_trials=BUDGET, sampler_seed=seed + 1000),
                evaluator=_evaluator(other.by_key(), random.Random(seed), noise, times, []),
                ).run()  # fmt: skip


def run_one(job: tuple[str, int, str, float]) -> dict[str, Any]:
    """One search + validation under one lever; GPU minutes, deployments and the pick."""
    name, seed, lever, noise = job
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    lv = LEVERS[lever]
    space_name, max_len, seeds_file = SURFACES[name]
    surface = _surface(name)
    space = load_space(ROOT / "search_spaces" / f"{space_name}.yaml")
    seeds = load_seeds(ROOT / seeds_file, space) if seeds_file else ()
    objective = load_objective(ROOT / "objectives" / "agent_multiturn.yaml")
    objective = objective.model_copy(update={"criteria": None})
    rng = random.Random(f"{name}:{seed}")
    search_s: list[float] = []
    val_s: list[float] = []
    times = recorded_times()
    points = surface.by_key()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "surface.json").write_text(json.dumps(surface.to_json()))
        profile = Profile(name="ttp", server=ServerArgs(model="m", max_model_len=max_len),
                          deployer=ReplayConfig(surface=Path(tmp) / "surface.json"))  # fmt: skip
        paths = StudyPaths.create("ttp", Path(tmp))
        if lv.warm:  # an earlier study of another model on this space, same server, other load
            _related(Path(tmp), name, seed, space, seeds, objective, profile, noise, times)
        settings = RunSettings(n_trials=BUDGET, sampler_seed=seed, sampler=lv.sampler,
                               settle=lv.settle, early_stop=lv.early_stop,
                               enqueue_seeds=not lv.warm,
                               warm_start=("related",) if lv.warm else ())  # fmt: skip
        runner = StudyRunner(paths=paths, space=space, seeds=() if lv.warm else tuple(seeds),
                             objective=objective, profile=profile, settings=settings,
                             evaluator=_evaluator(points, rng, noise, times, search_s,
                                                  lv.startup_saved_s))  # fmt: skip
        result = runner.run()
        study = load_study(paths)
        base = baseline_trial(study) or min(
            (t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: t.number)
        candidates = validation_candidates(study, paths.root, 3, base)
        extra = default_extra(result.deployed, 2, len(candidates))
        val = Validator(paths=paths, space=space, objective=objective, profile=profile,
                        candidates=candidates, settings=ValidationSettings(rounds=2, extra=extra),
                        evaluator=_evaluator(points, rng, noise, times, val_s,
                                             lv.startup_saved_s)).run()  # fmt: skip
        final = recommend(load_study(paths), root=paths.root)
        assert final is not None
        true = truth(name, 0.05, 12)
        pick = space.key(final.trial.params)
        dominated = sum(t.user_attrs.get("stop_reason") == "dominated" for t in study.trials)
        return {"surface": name, "seed": seed, "lever": lever,
                "minutes": (sum(search_s) + sum(val_s)) / 60, "search_minutes": sum(search_s) / 60,
                "search_deployments": result.deployed, "validation_deployments": val.done,
                "stop": result.stop, "dominated": dominated,
                "regret": true[pick] / min(true.values()) - 1}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--surfaces", nargs="+", default=["h100_llama6b", "synthetic_ties"])
    ap.add_argument("--levers", nargs="+", default=list(LEVERS), choices=list(LEVERS))
    ap.add_argument("--deployment-noise", type=float, default=0.08)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="time_to_pick.json")
    args = ap.parse_args()
    times = recorded_times()
    print(f"{len(times)} recorded GPU deployments: start-up median "
          f"{statistics.median(t[0] for t in times):.0f} s, measurement median "
          f"{statistics.median(t[1] for t in times):.1f} s per conversation; deployment noise "
          f"N(1, {args.deployment_noise}); {args.seeds} seeds")  # fmt: skip
    jobs = [(s, seed, lever, args.deployment_noise)
            for s in args.surfaces for lever in args.levers for seed in range(args.seeds)]  # fmt: skip
    with ProcessPoolExecutor(args.workers) as pool:
        runs = list(pool.map(run_one, jobs, chunksize=2))
    print("| surface | lever | GPU min to pick (median, p90) | deployments (search + val.) "
          "| dominated stops | within 5 % | mean regret |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    rows = []
    for s in args.surfaces:
        for lever in args.levers:
            rs = [r for r in runs if r["surface"] == s and r["lever"] == lever]
            mins = [r["minutes"] for r in rs]
            row = {"surface": s, "lever": lever, "minutes_median": statistics.median(mins),
                   "minutes_p90": float(np.percentile(mins, 90)),
                   "search": statistics.mean(r["search_deployments"] for r in rs),
                   "validation": statistics.mean(r["validation_deployments"] for r in rs),
                   "dominated": statistics.mean(r["dominated"] for r in rs),
                   "within_5pct": float(np.mean([r["regret"] <= 0.05 for r in rs])),
                   "mean_regret": float(np.mean([r["regret"] for r in rs]))}  # fmt: skip
            rows.append(row)
            print(f"| {s} | {lever} | {row['minutes_median']:.0f}, {row['minutes_p90']:.0f} | "
                  f"{row['search']:.1f} + {row['validation']:.1f} | {row['dominated']:.1f} | "
                  f"{row['within_5pct']:.0%} | {row['mean_regret']:.1%} |")  # fmt: skip
    out = ROOT / "benchmarks" / "results" / args.out
    out.write_text(json.dumps({"args": vars(args), "rows": rows, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
