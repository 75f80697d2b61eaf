"""Print the H100 study as a markdown table: client vs vLLM server-side TTFT, KV-cache size, spread.

Usage: python benchmarks/gpu/summarize.py benchmarks/results/gpu/h100
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import optuna

from tuner.schema import TrialFolder


def main() -> None:
    root = Path(sys.argv[1])
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=root.name, storage=f"sqlite:///{root / 'study.db'}")
    print(
        "| trial | config | mem | prefix | chunked | seqs | tokens | startup s | MISS ms [min-max] "
        "| HIT ms [min-max] | MISS/HIT | hit rate | server MISS / HIT ms | client-server HIT ms "
        "| KV tokens | VRAM MiB |"
    )
    print("|" + "---|" * 16)
    for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        a = t.user_attrs
        if "duplicate_of" in a:
            continue
        doc = TrialFolder.of(root, t.number).read_measurements()
        kv = doc.cache_config.get("kv_cache_size_tokens", "–")
        p = t.params
        onoff = {True: "on", False: "off", None: "–"}
        print(
            f"| {t.number} | {a.get('seed_name') or '(TPE)'} | {p['gpu_memory_utilization']} "
            f"| {onoff[p['enable_prefix_caching']]} | {onoff[p['enable_chunked_prefill']]} "
            f"| {p['max_num_seqs'] or '–'} | {p['max_num_batched_tokens'] or '–'} "
            f"| {a['startup_s']:.0f} "
            f"| {a['ttft_miss_ms']:.1f} [{a['ttft_miss_min_ms']:.0f}-{a['ttft_miss_max_ms']:.0f}] "
            f"| {a['ttft_hit_ms']:.1f} [{a['ttft_hit_min_ms']:.0f}-{a['ttft_hit_max_ms']:.0f}] "
            f"| {a['speedup']:.2f} | {a['hit_rate_hit']:.3f} "
            f"| {a['server_ttft_miss_ms']:.1f} / {a['server_ttft_hit_ms']:.1f} "
            f"| {a['ttft_hit_ms'] - a['server_ttft_hit_ms']:+.1f} | {kv} | {a['vram_mib']:.0f} |"
        )


if __name__ == "__main__":
    main()
