"""Print a GPU study as a markdown table: client vs vLLM server-side TTFT, ITL, KV cache, spread.

Usage: python benchmarks/gpu/summarize.py benchmarks/results/gpu/h100  (or .../h100c8, .../tp2)
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
        "| HIT ms [min-max] | ITL p90 ms | hit rate | server MISS / HIT ms | KV tokens | KV peak "
        "| VRAM MiB | per GPU MiB |"
    )
    print("|" + "---|" * 17)
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
            f"| {_f(a.get('startup_s'), '.0f')} "
            f"| {_f(a.get('ttft_miss_ms'))} [{_f(a.get('ttft_miss_min_ms'), '.0f')}-"
            f"{_f(a.get('ttft_miss_max_ms'), '.0f')}] "
            f"| {_f(a.get('ttft_hit_ms'))} [{_f(a.get('ttft_hit_min_ms'), '.0f')}-"
            f"{_f(a.get('ttft_hit_max_ms'), '.0f')}] "
            f"| {_f(a.get('itl_p90_ms'))} | {_f(a.get('hit_rate_hit'), '.3f')} "
            f"| {_f(a.get('server_ttft_miss_ms'))} / {_f(a.get('server_ttft_hit_ms'))} "
            f"| {kv} | {_f(a.get('kv_peak'), '.2f')} | {_f(a.get('vram_mib'), '.0f')} "
            f"| {_per_gpu(a.get('vram_per_gpu_mib'))} |"
        )


def _per_gpu(v: object) -> str:
    """GPU memory per GPU ("0: 128384, 1: 128384"); "–" for studies from before it was kept."""
    if not isinstance(v, dict) or not v:
        return "–"
    return ", ".join(f"{k}: {x:.0f}" for k, x in sorted(v.items()))


def _f(v: object, fmt: str = ".1f") -> str:
    """A number as ``fmt``; "–" where the trial has none (e.g. server TTFT under load)."""
    return format(v, fmt) if isinstance(v, int | float) else "–"

if __name__ == "__main__":
    main()
