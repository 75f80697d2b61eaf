"""Which knobs move what, and when: four configurations at C=1 and C=4 on a real vLLM-CPU.

Deploys the tiny random-weight Llama (``tuner demo-model``) with vLLM-CPU four times: baseline
(prefix caching off), prefix caching on, prefix + ``--max-num-seqs 2``, prefix + chunked
prefill with a 256-token budget. Each deployment is measured at one conversation at a time
and at four (different workload seeds, so the second run's prompts are new to the cache), on
agent conversations with a shared system prompt and tool results. Prints per request class
p50/p90 TTFT with 95 % bootstrap intervals, ITL p90 and cached share, and writes
``benchmarks/results/workload_sensitivity.json``. A last deployment repeats the prefix-only
C=1 run without reading /metrics between requests (the HIT gap question of the workloads
issue). About 12 minutes on 2 cores.

Usage: python benchmarks/workload_sensitivity.py [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from tuner.config import LocalConfig, Profile, ServerArgs
from tuner.config.workload import SyntheticAgentSpec
from tuner.demo_model import build_tiny_model
from tuner.deploy import make_deployer
from tuner.measure import TrialMeasurement, measure
from tuner.metrics import bootstrap_interval, percentile

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "baseline (prefix off)": ["--no-enable-prefix-caching"],
    "prefix": ["--enable-prefix-caching"],
    "prefix + max_num_seqs 2": ["--enable-prefix-caching", "--max-num-seqs", "2"],
    "prefix + chunked, budget 256": [
        "--enable-prefix-caching", "--enable-chunked-prefill", "--max-num-batched-tokens", "256",
    ],
}  # fmt: skip
WORKLOAD = SyntheticAgentSpec(
    system_prompt_words=600,
    tools=4,
    turns=4,
    user_words=30,
    tool_result_words=300,
    max_tokens=16,
    conversations=6,
    warmup_conversations=1,
    salt_system_prompt=False,
    stagger_s=0.3,
    request_timeout_s=120,
)


def classes(m: TrialMeasurement) -> dict[str, Any]:
    out: dict[str, Any] = {}
    measured = [s for s in m.samples if s.kind != "warmup"]
    for klass in dict.fromkeys(s.klass for s in measured):
        xs = [s.ttft_ms for s in measured if s.klass == klass]
        itl = [v for s in measured if s.klass == klass for v in s.itl_ms]
        p50, p90 = bootstrap_interval("median", xs), bootstrap_interval("p90", xs)
        out[klass] = {
            "n": len(xs),
            "p50_ms": percentile(xs, 50),
            "p50_ci": list(p50),
            "p90_ms": percentile(xs, 90),
            "p90_ci": list(p90),
            "itl_p90_ms": percentile(itl, 90),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    out = ROOT / "benchmarks/results/workload_sensitivity.json"
    ap.add_argument("--out", type=Path, default=out)
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "tiny-llama")
        profile = Profile(
            name="sens",
            server=ServerArgs(model=str(model), served_model_name="tiny-llama",
                              max_model_len=4096, extra_args=["--enforce-eager", "--seed", "0"]),
            deployer=LocalConfig(env={"VLLM_CPU_KVCACHE_SPACE": "1"}, health_timeout_s=400,
                                 stop_timeout_s=20),
        )  # fmt: skip
        runs = [(name, flags, c, True) for name, flags in CONFIGS.items() for c in (1, 4)]
        runs.append(("prefix, no /metrics between requests", CONFIGS["prefix"], 1, False))
        current: tuple[str, ...] | None = None
        dep = make_deployer(profile)
        with dep:
            for i, (name, flags, c, per_request) in enumerate(runs):
                key = (name if not per_request else "", *flags)
                if key != current:
                    dep.stop()
                    ep = dep.start(flags, Path(tmp) / f"t{i}")
                    startup = dep.wait_ready()
                    current = key
                spec = WORKLOAD.model_copy(
                    update={"concurrency": c, "seed": 7 + 10 * c + i,
                            "per_request_metrics": per_request}
                )  # fmt: skip
                t0 = time.perf_counter()
                m = measure(ep, spec, check_alive=dep.check_alive)
                row = {
                    "config": name, "flags": flags, "concurrency": c, "startup_s": startup,
                    "measure_s": time.perf_counter() - t0, "classes": classes(m),
                    "cached_share_hit": m.cached_share_hit, "queue_ms": m.queue_ms,
                    "preemptions": m.preemptions, "requests_s": m.requests_s,
                }  # fmt: skip
                rows.append(row)
                print(f"{name:40} C={c}", "  ".join(
                    f"{k} p50 {v['p50_ms']:.0f} p90 {v['p90_ms']:.0f} ms (n={v['n']})"
                    for k, v in row["classes"].items()), flush=True)  # fmt: skip
    args.out.write_text(json.dumps({"workload": WORKLOAD.model_dump(), "runs": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
