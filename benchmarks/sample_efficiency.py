"""Does the Bayesian search find the Pareto front in fewer deployments than the grid?

For each surface (benchmarks/data/), each search strategy and each sampler seed, a study runs
with the tuner's own StudyRunner (seeds, dedup, validity rules, duplicate fallback) over the
surface's space; each "deployment" draws a bootstrap re-measurement from the recorded samples
(3 MISS, 9 HIT), or fails with the recorded reason. After every deployment the hypervolume of
the front found so far (true values of the points found, 3 objectives min-max normalised over the
surface, reference point 1.1) is divided by the true front's.

Prints, per surface: median [p25-p75] hypervolume ratio at 12/20/30/40/60 deployments, median
deployments to reach 95 %, failed deployments within 40; writes
benchmarks/results/sample_efficiency.json and .html (and .png when chromium is installed).

Usage: python benchmarks/sample_efficiency.py [--seeds 20] [--surfaces synthetic_mission cpu_48]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import shutil
import statistics
import subprocess
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from tuner.config import (
    Profile,
    ReplayConfig,
    ServerArgs,
    load_objective,
    load_seeds,
    load_space,
)
from tuner.config.seeds import Seed
from tuner.front import normalised_hypervolume
from tuner.schema import Surface, load_surface, point_key
from tuner.study import RunSettings, StudyPaths, StudyRunner
from tuner.study._trial import TrialOutcome, record_failure
from tuner.study.storage import MEMORY

ROOT = Path(__file__).resolve().parents[1]
BUDGETS = (12, 20, 30, 40, 60)
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#e377c2",
           "#bcbd22", "#7f7f7f")  # fmt: skip
# surface -> (space file, fixed server args the validity rules see, seeds file or None)
SURFACES: dict[str, tuple[str, list[str], str | None]] = {
    "synthetic_mission": ("seed_192", ["--max-model-len", "131072"], "configs/strategic_12.yaml"),
    "cpu_48": ("cpu_48", ["--max-model-len", "4096"], None),
    # the optimum (chunked prefill with a large budget under load) is not among the seeds
    "synthetic_concurrent": ("seed_192", ["--max-model-len", "131072"], "configs/strategic_12.yaml"),
}
# strategy -> (sampler, the proposer's freshness on, enqueue the 12 seeds, then every point in grid order:
# "declared" = the space file's order, "permuted" = its dimensions in a seeded random order)
STRATEGIES: dict[str, tuple[str, bool, bool, str | None]] = {
    "default": ("tpe", True, True, None),
    "default_no_coverage": ("tpe", True, True, None),
    "default_before": ("tpe-independent", False, True, None),  # the default until this change
    "tpe_indep_fresh": ("tpe-independent", True, True, None),
    "tpe_no_seeds": ("tpe", True, False, None),
    "random": ("random", False, False, None),
    "nsga2": ("nsga2", False, False, None),
    "seeds_then_grid": ("tpe", False, True, "declared"),
    "seeds_then_grid_permuted": ("tpe", False, True, "permuted"),
    "seeds_then_shuffled_grid": ("grid", False, True, None),  # GridSampler: random point order
}


def _true_values(surface: Surface) -> dict[str, np.ndarray]:
    return {
        p.key: np.array([statistics.median(p.hit_ms), statistics.median(p.miss_ms), p.vram_mib])
        for p in surface.points
        if p.status == "ok"
    }


class Scorer:
    """Hypervolume of a set of points, normalised over the whole surface."""

    def __init__(self, truth: dict[str, np.ndarray]) -> None:
        allv = np.array(list(truth.values()))
        self.lo, self.hi = allv.min(axis=0), allv.max(axis=0)
        self.truth = truth
        self.best = self.hv(list(truth))

    def hv(self, keys: list[str]) -> float:
        return normalised_hypervolume([self.truth[k] for k in keys], self.lo, self.hi)


def _evaluator(surface: Surface, rng: random.Random) -> Any:
    points = surface.by_key()

    def evaluate(study: optuna.Study, trial: optuna.Trial, *, flags: list[str], env: Any = None,
                 **_: Any) -> TrialOutcome:  # fmt: skip
        p = points.get(point_key(flags, env))
        seed = trial.user_attrs.get("seed_name")
        params = dict(trial.params)
        if p is None or p.status != "ok":
            reason = p.status if p else "crash"
            record_failure(study, trial, reason, "replayed failure")
            return TrialOutcome(trial.number, params, "fail", reason, seed, deployed=True)
        hit = statistics.median(rng.choices(p.hit_ms, k=9))
        miss = statistics.median(rng.choices(p.miss_ms, k=3))
        values = (hit, miss, p.vram_mib)
        study.tell(trial, list(values))
        return TrialOutcome(trial.number, params, "complete", None, seed, values, deployed=True)

    return evaluate


def run_one(job: tuple[str, str, int, int]) -> dict[str, Any]:
    """One simulated study: hypervolume ratio after each deployment."""
    name, strategy, seed, budget = job
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space_name, server_args, seeds_file = SURFACES[name]
    surface = load_surface(ROOT / "benchmarks" / "data" / f"{name}.json")
    space = load_space(ROOT / "search_spaces" / f"{space_name}.yaml")
    scorer = Scorer(_true_values(surface))
    sampler, fresh, with_seeds, grid_order = STRATEGIES[strategy]
    seeds: tuple[Seed, ...] = ()
    if with_seeds and seeds_file:
        seeds = load_seeds(ROOT / seeds_file, space)
    if grid_order:
        dims = list(space.dimensions)
        if grid_order == "permuted":
            random.Random(seed).shuffle(dims)
        grid = itertools.product(*(d.values for d in dims))
        points = (dict(zip((d.name for d in dims), combo, strict=True)) for combo in grid)
        seeds += tuple(Seed(f"grid_{i}", p) for i, p in enumerate(points))
    objective = load_objective(ROOT / "objectives" / "agent_multiturn.yaml")
    found: list[str] = []
    ratios: list[float] = []
    failed: list[int] = []

    def ended(o: TrialOutcome) -> None:
        if not o.deployed:
            return
        if o.state == "complete":
            found.append(point_key(space.to_flags(o.params), space.to_env(o.params)))
        failed.append(int(o.state != "complete"))
        ratios.append(scorer.hv(found) / scorer.best)

    with tempfile.TemporaryDirectory() as tmp:
        runner = StudyRunner(
            paths=StudyPaths.create("bench", Path(tmp), MEMORY),
            space=space,
            seeds=seeds,
            objective=objective.model_copy(update={"criteria": None}),
            profile=Profile(
                name="bench",
                server=ServerArgs(model="m", max_model_len=int(server_args[1])),
                deployer=ReplayConfig(surface=ROOT / "benchmarks" / "data" / f"{name}.json"),
            ),
            settings=RunSettings(n_trials=budget, sampler_seed=seed, sampler=sampler, fresh=fresh,
                                 cover_values=strategy != "default_no_coverage"),  # fmt: skip
            evaluator=_evaluator(surface, random.Random(seed)),
            on_trial_end=ended,
        )
        t0 = time.perf_counter()
        result = runner.run()
    return {"surface": name, "strategy": strategy, "seed": seed, "ratios": ratios,
            "failed": failed, "seconds": time.perf_counter() - t0,
            "trials": result.new_trials}  # fmt: skip


def _q(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for name in dict.fromkeys(r["surface"] for r in results):
        for strategy in STRATEGIES:
            rs = [r for r in results if r["surface"] == name and r["strategy"] == strategy]
            if not rs:
                continue
            row: dict[str, Any] = {"surface": name, "strategy": strategy}
            for b in BUDGETS:
                at = [r["ratios"][min(b, len(r["ratios"])) - 1] for r in rs if r["ratios"]]
                row[f"hv@{b}"] = (_q(at, 50), _q(at, 25), _q(at, 75))
            to95 = [next((i + 1 for i, x in enumerate(r["ratios"]) if x >= 0.95), None) for r in rs]
            reached = [x for x in to95 if x is not None]
            row["to95_median"] = statistics.median(reached) if len(reached) * 2 > len(rs) else None
            row["reached95"] = f"{len(reached)}/{len(rs)}"
            row["failed@40"] = statistics.median(sum(r["failed"][:40]) for r in rs)
            row["s_per_study"] = statistics.median(r["seconds"] for r in rs)
            row["trials@60"] = statistics.median(r.get("trials", 0) for r in rs)
            rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    head = ["surface", "strategy", *(f"HV@{b}" for b in BUDGETS), "to 95 %", "failed@40", "trials"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [r["surface"], r["strategy"]]
        cells += [f"{r[f'hv@{b}'][0]:.3f} [{r[f'hv@{b}'][1]:.2f}-{r[f'hv@{b}'][2]:.2f}]" for b in BUDGETS]
        cells += [f"{r['to95_median'] or '>60'} ({r['reached95']})", f"{r['failed@40']:g}",
                  f"{r['trials@60']:g}"]  # fmt: skip
        print("| " + " | ".join(str(c) for c in cells) + " |")


def plot(results: list[dict[str, Any]], out: Path) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(dict.fromkeys(r["surface"] for r in results))
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names)
    for col, name in enumerate(names, start=1):
        for k, strategy in enumerate(STRATEGIES):
            rs = [r["ratios"] for r in results if r["surface"] == name and r["strategy"] == strategy]
            if not rs:
                continue
            n = max(len(x) for x in rs)
            med = [statistics.median(x[min(i, len(x) - 1)] for x in rs) for i in range(n)]
            # One colour per strategy in every panel (plotly would continue its cycle instead).
            line = {"color": PALETTE[k % len(PALETTE)], "width": 3 if strategy == "default" else 1.5}
            fig.add_trace(go.Scatter(x=list(range(1, n + 1)), y=med, name=strategy, legendgroup=strategy,
                                     showlegend=col == 1, line=line), row=1, col=col)  # fmt: skip
        fig.update_xaxes(title_text="deployments", row=1, col=col)
    fig.update_yaxes(range=[0.8, 1.005])  # the differences that matter are near the top
    fig.update_yaxes(title_text="hypervolume / true front's (median of seeds)", row=1, col=1)
    fig.update_layout(height=450, width=1200)
    out.with_suffix(".html").write_text(fig.to_html(include_plotlyjs=True))
    chromium = shutil.which("chromium")
    if chromium:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1240,480",
                        "--virtual-time-budget=8000", f"--screenshot={out.with_suffix('.png')}",
                        out.with_suffix(".html").as_uri()], capture_output=True, timeout=120, check=False)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--surfaces", nargs="+", default=list(SURFACES))
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sample_efficiency")
    args = ap.parse_args()
    surfaces = [s for s in args.surfaces if (ROOT / "benchmarks" / "data" / f"{s}.json").exists()]
    jobs = [(s, st, seed, max(BUDGETS)) for s in surfaces for st in args.strategies for seed in range(args.seeds)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(run_one, jobs))
    rows = summarise(results)
    print_table(rows)
    print(f"\n{len(jobs)} simulated studies in {time.perf_counter() - t0:.0f} s")
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "results": results}))
    plot(results, out)


if __name__ == "__main__":
    main()
