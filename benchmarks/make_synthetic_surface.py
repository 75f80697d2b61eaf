"""Write benchmarks/data/synthetic_mission.json: a surface over the mission's 192-point space,
shaped like its findings (not measured):

- baseline (mem 0.95, prefix off, chunked off): MISS ~1828 ms, HIT ~1607 ms;
- prefix caching alone gives the best HIT (~0.3 x MISS, hit rate ~0.95); off: hit rate 0;
- chunked prefill with prefix caching is 2-3x worse (the mission's failed "optimized" config,
  budget 2048: MISS 4376 / HIT 3199); larger budgets hurt less;
- VRAM grows with gpu_memory_utilization (2 x 24 GB RTX 4090) and a little with max_num_seqs;
- OOM at 0.95 with 128 sequences, and at >= 0.92 with 128 sequences and an 8192-token budget;
- invalid combinations come from the validity rules with max_model_len 131072 (not stored);
- noise: log-normal, 6 % on MISS and 10 % on HIT, 3 MISS and 9 HIT samples per configuration.

``--kind concurrent`` writes benchmarks/data/synthetic_concurrent.json instead: the same space
under a concurrent, KV-bound agent load (8 agents, long contexts), where the best configuration
is not among the 12 strategic seeds (none of which sets a token budget):

- prefix caching still decides HIT (~0.35 x);
- chunked prefill with a large budget wins: 8192 tokens 0.85 x MISS / 0.75 x HIT, 4096 0.95 / 0.85,
  the default budget 1.15 / 1.15, 2048 1.35 / 1.2; chunked off lets long prefills stall the
  batch (HIT 1.3 x);
- a smaller KV cache evicts prefixes: HIT x 1.25 at 0.90, x 1.12 at 0.92 (memory is a trade-off);
- OOM at 0.95 with 128 sequences and an 8192-token budget; noise as above.

Usage: python benchmarks/make_synthetic_surface.py [--seed 0] [--kind mission|concurrent]
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

from tuner.config import load_space, violations
from tuner.schema import Surface, SurfacePoint

ROOT = Path(__file__).resolve().parents[1]
MODEL_ARGS = ["--model", "Qwen/Qwen3-32B-AWQ", "--max-model-len", "131072"]


def expected(p: dict) -> tuple[float, float, float, float, str]:
    """(MISS ms, HIT ms, hit rate, VRAM MiB, status) of a configuration, before noise."""
    mem, prefix, chunked = p["gpu_memory_utilization"], p["enable_prefix_caching"], p["enable_chunked_prefill"]
    seqs, budget = p["max_num_seqs"], p["max_num_batched_tokens"]
    if seqs == 128 and (mem == 0.95 or (mem >= 0.92 and budget == 8192)):
        return 0, 0, 0, 0, "oom"
    miss = 1828.0 * (1 + 0.4 * (0.95 - mem))  # less KV cache: a little more preemption
    if seqs is not None:
        miss *= {32: 1.04, 64: 1.0, 128: 0.98}[seqs]
    hit = miss * 0.88
    rate = 0.0
    if prefix:
        hit, rate = miss * 0.3, 0.95
    if chunked:
        factor = {2048: 2.4, 4096: 1.7, 8192: 1.25, None: 1.35}[budget]
        miss *= factor if prefix else 1 + (factor - 1) / 4
        hit *= factor * 1.1 if prefix else 1 + (factor - 1) / 4
    vram = mem * 2 * 24564 + {None: 300, 32: 0, 64: 120, 128: 260}[seqs]
    return miss, hit, rate, vram, "ok"


def expected_concurrent(p: dict) -> tuple[float, float, float, float, str]:
    """(MISS ms, HIT ms, hit rate, VRAM MiB, status) under the concurrent KV-bound load."""
    mem, prefix, chunked = p["gpu_memory_utilization"], p["enable_prefix_caching"], p["enable_chunked_prefill"]
    seqs, budget = p["max_num_seqs"], p["max_num_batched_tokens"]
    if seqs == 128 and mem == 0.95 and budget == 8192:
        return 0, 0, 0, 0, "oom"
    miss = 2600.0 * {0.90: 1.1, 0.92: 1.05, 0.95: 1.0}[mem]
    miss *= {None: 1.02, 32: 1.05, 64: 1.0, 128: 1.03}[seqs]
    hit, rate = miss * 0.9, 0.0
    if prefix:
        hit, rate = miss * 0.35 * {0.90: 1.25, 0.92: 1.12, 0.95: 1.0}[mem], 0.9
    if chunked:
        m, h = {2048: (1.35, 1.2), 4096: (0.95, 0.85), 8192: (0.85, 0.75), None: (1.15, 1.15)}[budget]
        miss, hit = miss * m, hit * h
    else:
        hit *= 1.3
    vram = mem * 2 * 24564 + {None: 300, 32: 0, 64: 120, 128: 260}[seqs]
    return miss, hit, rate, vram, "ok"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kind", choices=["mission", "concurrent"], default="mission")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    name = f"synthetic_{args.kind}"
    model = expected if args.kind == "mission" else expected_concurrent
    args.out = args.out or ROOT / "benchmarks" / "data" / f"{name}.json"
    rng = random.Random(args.seed)
    space = load_space(ROOT / "search_spaces" / "seed_192.yaml")
    points = []
    for params in space.points():
        flags = space.to_flags(params)
        if violations([*MODEL_ARGS, *flags]):
            continue  # the validity rules reject it before any deployment
        miss, hit, rate, vram, status = model(params)
        if status != "ok":
            points.append(SurfacePoint(params, flags, {}, status, error="CUDA out of memory (synthetic)"))
            continue
        noisy = lambda m, s, n: [round(m * math.exp(rng.gauss(0, s)), 2) for _ in range(n)]  # noqa: E731
        points.append(
            SurfacePoint(
                params, flags, {}, "ok",
                miss_ms=noisy(miss, 0.06, 3), hit_ms=noisy(hit, 0.10, 9), hit_rate=rate,
                vram_mib=round(vram * (1 + rng.gauss(0, 0.002)), 1), startup_s=round(rng.uniform(90, 160), 1),
            )  # fmt: skip
        )
    surface = Surface(
        name=name,
        description=__doc__.split("\n\nUsage")[0],
        space=space.name,
        objectives=["ttft_hit_ms", "ttft_miss_ms", "vram_mib"],
        points=points,
    )
    args.out.write_text(json.dumps(surface.to_json(), indent=1))
    ok = sum(p.status == "ok" for p in points)
    print(f"wrote {args.out}: {ok} measured-like points, {len(points) - ok} OOM, of {space.size}")


if __name__ == "__main__":
    main()
