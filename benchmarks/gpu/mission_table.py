"""Print a study's deployments and its pick against the others over every deployment, as markdown.

Usage: python benchmarks/gpu/mission_table.py STUDY_FOLDER [REFERENCE_SEED ...]

1. Every deployment, search and validation, in order: start-up, the whole trial (start, load,
   answer guard, stop), TTFT, ITL, the KV cache's capacity and peak use, preemptions, the time
   requests waited in vLLM's queue, the prefix-cache hit rate of later turns.
2. The validated pick against each other configuration measured, pooling every deployment of
   each (search and validation): the 95 % interval of the difference of medians carries the
   samples within each deployment and the study's between-deployment variation.
3. GPU minutes: from the first deployment's start to the validated pick, deployments only.
"""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from tuner.decide import load_observations, study_noise
from tuner.metrics import METRICS, Observations
from tuner.trial import StoredTrial


def _cell(value: object, fmt: str = "{:.0f}") -> str:
    return fmt.format(value) if isinstance(value, int | float) else "–"


def _seconds(t: FrozenTrial) -> float:
    assert t.datetime_start is not None
    assert t.datetime_complete is not None
    return (t.datetime_complete - t.datetime_start).total_seconds()


def main(folder: Path, references: list[str]) -> None:
    """Print the three tables for the study stored in ``folder``."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name, url = folder.name, f"sqlite:///{folder / 'study.db'}"
    study = optuna.load_study(study_name=name, storage=url)
    validation = optuna.load_study(study_name=f"{name}.validation", storage=url)
    noise = study_noise(study, validation)
    rows = [("search", t) for t in study.trials] + [("validation", t) for t in validation.trials]
    print(
        "| phase | trial | configuration | outcome | start-up s | trial s | HIT p50 ms "
        "| MISS p50 ms | ITL p90 ms | KV tokens | KV peak | preempted | queued ms | hit rate |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for phase, t in rows:
        a = t.user_attrs
        label = a.get("seed_name") or a.get("candidate") or f"trial_{t.number}"
        kv = a.get("kv_cache_tokens")
        print("| " + " | ".join([
            phase, str(t.number), str(label), str(a.get("reason") or "ok"),
            _cell(a.get("startup_s")), _cell(_seconds(t)) if t.datetime_complete else "–",
            _cell(a.get("ttft_hit_ms")), _cell(a.get("ttft_miss_ms")), _cell(a.get("itl_p90_ms")),
            f"{kv / 1000:.0f} k" if isinstance(kv, int | float) else "–",
            _cell(a.get("kv_peak"), "{:.2f}"), _cell(a.get("preemptions")),
            _cell(a.get("queue_ms")), _cell(a.get("hit_rate_hit"), "{:.2f}"),
        ]) + " |")  # fmt: skip

    # every deployment of each configuration, by its name
    measured = [t for t in study.trials if StoredTrial(t).measured]
    fresh = [t for t in validation.trials if StoredTrial(t).measured]
    obs = load_observations(study, folder, measured)
    vobs = load_observations(validation, folder / "validation", fresh)
    series: dict[str, list[Observations]] = {}
    for t in measured:
        series.setdefault(StoredTrial(t).name, []).append(obs[t.number])
    for t in fresh:
        series.setdefault(StoredTrial(t).name, []).append(vobs[t.number])
    pooled = {
        label: [v for v in (t.user_attrs.get("ttft_hit_ms") for t in [*measured, *fresh]
                            if StoredTrial(t).name == label) if isinstance(v, int | float)]
        for label in series
    }  # fmt: skip
    pick = min(
        pooled, key=lambda k: sum(pooled[k]) / len(pooled[k]) if len(pooled[k]) > 1 else 1e12
    )
    print(f"\nNoise: {noise.words()}.\n")
    print(
        f"| {pick} against | deployments | their HIT p50 ms, each | HIT p50 | MISS p50 | ITL p90 |"
    )
    print("|---|---|---|---|---|---|")
    for label in [*references, *(k for k in series if k not in references and k != pick)]:
        if label not in series:
            continue
        cells = [label, f"{len(series[pick])} vs {len(series[label])}",
                 ", ".join(f"{v:.0f}" for v in pooled[label])]  # fmt: skip
        for metric in ("ttft_hit_ms", "ttft_miss_ms", "itl_p90_ms"):
            spec = METRICS[metric]
            mine, theirs = series[pick], series[label]
            # the point: the mean of each deployment's figure, as validation pools them
            ref = sum(spec.compute(o) for o in theirs) / len(theirs)
            diff = sum(spec.compute(o) for o in mine) / len(mine) - ref
            lo, hi = noise.diff(spec.stat, [spec.samples(o) for o in mine],
                                [spec.samples(o) for o in theirs])  # fmt: skip
            cells.append(
                f"{diff / ref * 100:+.0f} % [{lo / ref * 100:+.0f}, {hi / ref * 100:+.0f}]"
            )
        print("| " + " | ".join(cells) + " |")

    # validation's first round is `tuner optimize`'s; later rounds are re-deployments after it
    deployed = [(p, t) for p, t in rows if t.datetime_complete and _seconds(t) > 1]
    to_pick = [t for p, t in deployed if p == "search" or t.user_attrs.get("round") == 0]
    first = min(t.datetime_start for t in to_pick if t.datetime_start)
    picked = max(t.datetime_complete for t in to_pick if t.datetime_complete)
    print(
        f"\nGPU minutes to the validated pick: {sum(map(_seconds, to_pick)) / 60:.1f} deploying "
        f"({len(to_pick)} deployments, cut ones included), "
        f"{(picked - first).total_seconds() / 60:.1f} wall minutes from the first deployment; "
        f"{sum(_seconds(t) for _, t in deployed) / 60:.1f} with the later re-deployments."
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
