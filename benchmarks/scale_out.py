"""Scale-out: deployments per hour with 1, 2 and 4 workers, and what parallelism costs the search.

1. Throughput. `tuner optimize --workers N` (real worker processes, one journal file) on the
   replay deployer: synthetic_concurrent's start-ups (about 120 s) and latencies, scaled by
   --time-scale so that a run takes seconds. Prints deployments per hour of that run's wall
   clock and the speed-up over one worker (targets: >= 1.8x with 2, >= 3.5x with 4). Process
   start-up, seed queueing, storage reads and the waits at the end are all inside the wall time.
2. Search quality. N StudyRunner workers (threads, one journal file, each with its own sampler
   seed and the constant liar) run 40 deployments on a surface; each deployment draws a bootstrap
   re-measurement from the recorded samples and takes --draw-s of wall time, so that N of them
   are under way at once as on N GPUs. Prints the hypervolume ratio at 40 deployments (true
   values of the points found over the true front's), median [p25-p75] over seeds, 4 workers vs 1.

Usage: python benchmarks/scale_out.py [--seeds 10] [--trials 24] [--time-scale 0.02]
Writes benchmarks/results/scale_out_TIMESCALE.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sample_efficiency import SURFACES, Scorer, _evaluator, _true_values  # noqa: E402

from tuner.config import (  # noqa: E402
    Profile,
    ReplayConfig,
    ServerArgs,
    load_objective,
    load_seeds,
    load_space,
)
from tuner.schema import load_surface, point_key  # noqa: E402
from tuner.study import RunSettings, StudyPaths, StudyRunner  # noqa: E402
from tuner.study._trial import TrialOutcome  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data"


def throughput(workers: int, trials: int, time_scale: float, tmp: Path) -> float:
    """Wall seconds of a `tuner optimize --workers N` study of ``trials`` deployments."""
    profile = tmp / f"replay{workers}.yaml"
    profile.write_text(
        "name: replay\nserver: {model: m, max_model_len: 131072}\n"
        f"deployer: {{kind: replay, surface: {DATA / 'synthetic_concurrent.json'}, "
        f"time_scale: {time_scale}}}\n"
    )
    cmd = [sys.executable, "-m", "tuner.cli", "optimize", "--trials", str(trials),
           "--study", f"w{workers}", "--workers", str(workers), "--no-validate",
           "--profile", str(profile), "--studies-dir", str(tmp / "studies"),
           "--storage", f"journal:///{tmp}/w{workers}.journal"]  # fmt: skip
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    return wall


def quality(surface_name: str, workers: int, seed: int, draw_s: float, budget: int) -> float:
    """Hypervolume ratio after ``budget`` deployments by ``workers`` threads on one study."""
    space_name, server_args, seeds_file = SURFACES[surface_name]
    surface = load_surface(DATA / f"{surface_name}.json")
    space = load_space(ROOT / "search_spaces" / f"{space_name}.yaml")
    scorer = Scorer(_true_values(surface))
    seeds = load_seeds(ROOT / seeds_file, space) if seeds_file else ()
    objective = load_objective(ROOT / "objectives" / "agent_multiturn.yaml")
    profile = Profile(
        name="bench",
        server=ServerArgs(model="m", max_model_len=int(server_args[1])),
        deployer=ReplayConfig(surface=DATA / f"{surface_name}.json"),
    )
    found: list[str] = []
    lock = threading.Lock()

    def ended(o: TrialOutcome) -> None:
        if o.deployed and o.state == "complete":
            with lock:
                found.append(point_key(space.to_flags(o.params), space.to_env(o.params)))

    with tempfile.TemporaryDirectory() as tmp:
        url = f"journal:///{tmp}/study.journal"

        def runner(i: int | None) -> StudyRunner:
            draw = _evaluator(surface, random.Random(seed * 100 + (i or 0)))

            def evaluate(*args: Any, **kwargs: Any) -> TrialOutcome:
                time.sleep(draw_s)  # the deployment's time: the others run meanwhile
                return draw(*args, **kwargs)  # type: ignore[no-any-return]

            return StudyRunner(
                paths=StudyPaths.create("bench", Path(tmp), url),
                space=space, seeds=tuple(seeds),
                objective=objective.model_copy(update={"criteria": None}), profile=profile,
                settings=RunSettings(n_trials=budget, sampler_seed=seed * 1000 + (i or 0),
                                     enqueue_seeds=i is None, exclusive=i is None,
                                     heartbeat=None, artifacts=str(Path(tmp) / "art")),
                evaluator=evaluate, on_trial_end=ended,
            )  # fmt: skip

        if workers == 1:
            runner(None).run()
        else:
            runner(None).queue_seeds()
            threads = [threading.Thread(target=runner(i).run) for i in range(workers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    return scorer.hv(found[:budget]) / scorer.best


def _q(xs: list[float], q: float) -> float:
    return float(statistics.quantiles(xs, n=100, method="inclusive")[int(q * 100) - 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=24, help="deployments per throughput run")
    ap.add_argument("--time-scale", type=float, default=0.02)
    ap.add_argument("--seeds", type=int, default=10, help="search-quality seeds (0: skip it)")
    ap.add_argument("--draw-s", type=float, default=0.05)
    ap.add_argument("--surface", default="synthetic_concurrent")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    results: dict[str, Any] = {"throughput": {}, "quality": {}}
    print(f"throughput: {args.trials} deployments, replayed synthetic_concurrent, time scale "
          f"{args.time_scale}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        base = None
        for n in (1, 2, 4):
            wall = throughput(n, args.trials, args.time_scale, Path(tmp))
            per_hour = args.trials / wall * 3600  # of this scaled run's wall clock
            base = base or per_hour
            results["throughput"][n] = {"wall_s": wall, "per_hour": per_hour}
            print(f"  {n} worker(s): {wall:6.1f} s wall, {per_hour:6.0f} deployments/hour, "
                  f"{per_hour / base:.2f}x one worker")  # fmt: skip
    print(f"search quality: {args.surface}, 40 deployments, {args.seeds} seeds")
    for n in (1, 4) if args.seeds else ():
        ratios = [quality(args.surface, n, s, args.draw_s, 40) for s in range(args.seeds)]
        results["quality"][n] = ratios
        print(f"  {n} worker(s): hypervolume ratio {statistics.median(ratios):.3f} "
              f"[{_q(ratios, 0.25):.3f}-{_q(ratios, 0.75):.3f}]")  # fmt: skip
    out = ROOT / "benchmarks" / "results" / f"scale_out_{args.time_scale:g}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
