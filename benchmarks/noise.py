"""How far fresh deployments of one configuration land apart, per load timing.

Runs `tuner noise`'s measurement (tuner.study.noise.NoiseRun): one configuration deployed K
times per timing, interleaved (closed, timetable, closed, ...), the timetable sized to the
closed loop's arrivals and turn gaps, on the same conversations every time. Prints, per timing
and metric, each deployment's figure, the coefficient of variation and max/min between
deployments, the half-width of one deployment's own 95 % interval, the same request's CV
across deployments (p50 / p90), the requests in flight at a HIT send and the lateness; writes
benchmarks/results/noise_NAME.json.

Usage: python benchmarks/noise.py --profile configs/profiles/tiny_cpu.yaml [--deployments 3]
       [--seed baseline_reference] [--objective O] [--name cpu] [--studies DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from tuner.config import load_objective, load_profile, load_seeds, load_space
from tuner.study import StudyPaths
from tuner.study.noise import NoiseRun, NoiseSettings

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", type=Path, required=True)
    ap.add_argument("--objective", type=Path, default=None)
    ap.add_argument("--space", type=Path, default=ROOT / "search_spaces" / "seed_192.yaml")
    ap.add_argument("--seeds", type=Path, default=ROOT / "configs" / "strategic_12.yaml")
    ap.add_argument("--seed", default=None, help="the seed's configuration (default: the first)")
    ap.add_argument("--deployments", type=int, default=3)
    ap.add_argument("--name", default="cpu")
    ap.add_argument("--studies", type=Path, default=None, help="keep the study here")
    args = ap.parse_args()
    space, profile = load_space(args.space), load_profile(args.profile)
    objective = load_objective(args.objective or profile.objective or
                               ROOT / "objectives" / "agent_multiturn.yaml")  # fmt: skip
    seed = next(s for s in load_seeds(args.seeds, space) if args.seed in (None, s.name))
    with tempfile.TemporaryDirectory() as tmp:
        studies = args.studies or Path(tmp)
        t0 = time.perf_counter()
        result = NoiseRun(paths=StudyPaths.create(f"noise-{args.name}", studies), space=space,
                          objective=objective, profile=profile, params=dict(seed.params),
                          settings=NoiseSettings(args.deployments)).run()  # fmt: skip
        took = time.perf_counter() - t0
    print(f"{seed.name} on {profile.name}: {args.deployments} fresh deployments per timing, "
          f"{took / 60:.1f} min; timetable gaps {result.gaps}")  # fmt: skip
    print("| timing | metric | per deployment | CV | max/min | within one (±) "
          "| same request CV p50 / p90 | in flight at a HIT send | late ms |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for s in result.spreads:
        late = "–" if s.late_ms is None else f"{s.late_ms:.0f}"
        rc = "–" if math.isnan(s.request_cv[0]) else f"{s.request_cv[0]:.1%} / {s.request_cv[1]:.1%}"
        print(f"| {s.timing} | {s.metric} | {', '.join(f'{x:.1f}' for x in s.medians)} | "
              f"{s.cv:.1%} | {s.max_over_min:.3f} | {s.within:.1%} | {rc} | {s.in_flight:.1f} "
              f"| {late} |")  # fmt: skip
    out = ROOT / "benchmarks" / "results" / f"noise_{args.name}.json"
    out.write_text(json.dumps({
        "configuration": seed.name, "profile": profile.name, "deployments": args.deployments,
        "minutes": took / 60, "gaps": result.gaps,
        "spreads": [{**asdict(s), "cv": s.cv, "max_over_min": s.max_over_min}
                    for s in result.spreads],
    }, indent=1, default=str))  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
