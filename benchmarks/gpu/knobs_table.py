"""Print what each knob of a one-knob-at-a-time study did against its baseline, as markdown.

Usage: python benchmarks/gpu/knobs_table.py STUDY_FOLDER [BASELINE_SEED]

For every measured search trial: HIT, MISS and ITL medians against the baseline seed's, each
with the 95 % interval of the difference carrying both levels of noise (the samples within each
deployment, and the study's between-deployment variation: its validation rounds pooled with its
prior), the KV cache's capacity in tokens, the prefix-cache hit rate of later turns, and the
answer guard's verdict. One deployment each: read the intervals, not the point estimates.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import optuna

from tuner.decide import load_observations, study_noise
from tuner.decide.guard import agreement, baseline_answers
from tuner.metrics import METRICS
from tuner.trial import StoredTrial, seed_trial


def main(folder: Path, baseline: str = "knob_baseline") -> None:
    """Print the table for the study stored in ``folder``."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name, url = folder.name, f"sqlite:///{folder / 'study.db'}"
    study = optuna.load_study(study_name=name, storage=url)
    names = optuna.get_all_study_names(url)
    val = f"{name}.validation"
    validation = optuna.load_study(study_name=val, storage=url) if val in names else None
    noise = study_noise(study, validation)
    base = seed_trial(study.get_trials(deepcopy=False), baseline)
    assert base is not None, f"no completed {baseline!r} trial"
    done = [t for t in study.trials if StoredTrial(t).measured]
    obs = load_observations(study, folder, done)
    reference = baseline_answers(study)
    print(f"Noise: {noise.words()}.\n")
    print("| configuration | HIT p50 ms | vs baseline | MISS p50 ms | vs baseline | ITL p50 ms "
          "| vs baseline | KV tokens | hit rate | answers |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for t in done:
        cells = [StoredTrial(t).name]
        for metric in ("ttft_hit_ms", "ttft_miss_ms", "itl_ms"):
            spec = METRICS[metric]
            value = t.user_attrs.get(metric)
            cells.append(f"{value:.1f}" if isinstance(value, int | float) else "–")
            ref = base.user_attrs.get(metric)
            if t.number == base.number or not isinstance(ref, int | float) or not ref:
                cells.append("–")
                continue
            lo, hi = noise.diff(spec.stat, [spec.samples(obs[t.number])],
                                [spec.samples(obs[base.number])])  # fmt: skip
            rel = (float(value) - ref) / ref * 100 if isinstance(value, int | float) else math.nan
            cells.append(f"{rel:+.0f} % [{lo / ref * 100:+.0f}, {hi / ref * 100:+.0f}]")
        kv = t.user_attrs.get("kv_cache_tokens")
        cells.append(f"{kv / 1000:.0f} k" if isinstance(kv, int | float) else "–")
        rate = t.user_attrs.get("hit_rate_hit")
        cells.append(f"{rate:.2f}" if isinstance(rate, int | float) else "–")
        agree = agreement(reference, t)
        if agree is None:
            cells.append("–")
        elif agree.changed:
            n = len(agree.first_difference)
            cells.append(f"changed {agree.changed}/{n} ({agree.tokens_same:.0%} tokens)")
        else:
            cells.append("same")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), *sys.argv[2:3])
