"""The search's pick by the default rule, and the candidates validation redeploys.

The default rule: among the feasible Pareto points (those meeting the success criteria) whose
TTFT MISS stays within the criteria, the best group on TTFT HIT (the fastest and every point
within noise of it, ``tuner.decide.groups``); inside it, the fewest changes from the baseline,
then the lowest VRAM. The report's recommendation (``tuner.report.recommend``) and validation
(``tuner.study.validate``) both start from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from tuner.decide.groups import Group, best_group, changes_from, load_observations, reference_params
from tuner.decide.noise import study_noise
from tuner.decide.validation import load_validation
from tuner.front import candidate_trials, pareto_front
from tuner.trial import StudyAttr, metric_value, seed_trial

__all__ = [
    "HIT",
    "MISS",
    "VRAM",
    "baseline_trial",
    "best_reuse",
    "default_order",
    "headroom",
    "miss_ok",
    "search_order",
    "validation_candidates",
]

HIT, MISS, VRAM = "ttft_hit_ms", "ttft_miss_ms", "vram_mib"


def miss_ok(t: FrozenTrial) -> bool:
    """TTFT MISS within the criteria against the baseline (or no criterion on it)."""
    return t.constraints.get("miss_vs_baseline", 0.0) <= 0


def baseline_trial(study: optuna.Study) -> FrozenTrial | None:
    """The completed trial of the criteria's baseline seed, if measured."""
    crit = study.user_attrs.get(StudyAttr.CRITERIA) or {}
    return seed_trial(study.get_trials(deepcopy=False), crit.get("baseline"))


# A configuration this close to its KV cache's limit is one burst away from evicting prefixes.
KV_NEAR_LIMIT = 0.95
REUSE_LOST = 0.05  # prefix reuse this much below the group's best: some turns lost their prefix


def headroom(t: FrozenTrial, group_reuse: float | None = None) -> list[str]:
    """Why ``t`` runs near its limit, in words (empty: it has room): KV use that peaked near
    full, preemptions, prefix reuse lost against the best of its group (``group_reuse``)."""
    a, out = t.user_attrs, []
    peak, preempted, reuse = a.get("kv_peak"), a.get("preemptions"), a.get("cached_share_hit")
    if isinstance(peak, int | float) and peak >= KV_NEAR_LIMIT:
        out.append(f"KV cache peaked at {peak:.2f} of its capacity")
    if isinstance(preempted, int | float) and preempted > 0:
        out.append(f"{preempted:.0f} preemption(s)")
    lower = group_reuse - REUSE_LOST if group_reuse is not None else None
    if isinstance(reuse, int | float) and lower is not None and reuse < lower:
        out.append(f"prefix reuse {reuse:.0%} against {group_reuse:.0%}")
    return out


def best_reuse(trials: Sequence[FrozenTrial]) -> float | None:
    """The highest prefix reuse (cached share of HIT) among ``trials``."""
    xs = [
        float(v)
        for t in trials
        if isinstance(v := t.user_attrs.get("cached_share_hit"), int | float)
    ]
    return max(xs) if xs else None


def default_order(
    study: optuna.Study, cands: list[FrozenTrial], root: Path | None
) -> tuple[list[FrozenTrial], Group]:
    """``cands`` in the default rule's order: the best group on HIT (a member with headroom
    before one near its limit, then fewest changes, lowest VRAM), then the rest by HIT; and
    the group. ``root``: the study folder, where the trials' raw samples are.

    Headroom weighs before fewest changes: within noise on HIT, a member at 0.98 of its KV
    cache that lost prefix reuse on some turns is one longer conversation away from falling
    behind, while a member with room is not."""
    names = list(study.metric_names or ())
    pool = [t for t in cands if miss_ok(t)] or cands
    noise = study_noise(study, load_validation(study))
    group = best_group(study, pool, HIT, load_observations(study, root, pool), noise=noise)
    ref = reference_params(study)
    reuse = best_reuse(group.members)

    def inside(t: FrozenTrial) -> tuple[float, ...]:
        """Inside the group: room first, then fewest changes, least VRAM, the fastest."""
        vram = metric_value(study, t, VRAM) if VRAM in names else 0.0
        near = float(bool(headroom(t, reuse)))
        return (near, changes_from(t.params, ref), vram, metric_value(study, t, HIT), t.number)

    chosen = sorted(group.members, key=inside)
    rest = sorted((t for t in cands if t not in chosen), key=lambda t: metric_value(study, t, HIT))
    return chosen + rest, group


def search_order(
    study: optuna.Study, root: Path | None
) -> tuple[list[FrozenTrial], Group | None, bool]:
    """The front in the default rule's order (the search's pick first), its group on HIT
    (None when HIT is not an objective: the front by its first objective), and whether the
    front is the feasible one."""
    front, feasible = pareto_front(study)
    if not front or HIT not in (study.metric_names or ()):
        return front, None, feasible
    ordered, group = default_order(study, front, root)
    return ordered, group, feasible


def validation_candidates(
    study: optuna.Study, root: Path | None, top: int, baseline: FrozenTrial | None = None
) -> list[FrozenTrial]:
    """What validation redeploys: the search's pick, the fastest other measured points on
    TTFT HIT (``top`` in all), then the baseline (``baseline``, else the criteria's baseline
    seed when it was measured); empty when nothing was measured.

    Not the group's order (fewest changes first): each point was deployed once, so the truly
    fastest may sit anywhere in its group, and only a candidate can be found faster by the
    fresh deployments. Nor the front alone: the front is drawn from one deployment per point,
    and a point that a neighbour's lucky deployment dominates (a little faster on HIT and MISS
    at the same VRAM) may still be the fastest; off the front it would never be re-measured.
    """
    ordered, group, _ = search_order(study, root)
    if not ordered:
        return []
    if group is not None:
        pool, _ = candidate_trials(study)
        pool = [t for t in pool if miss_ok(t)] or pool
        pool = sorted(pool, key=lambda t: (metric_value(study, t, HIT), t.number))
    else:
        pool = [t for t in ordered if miss_ok(t)] or ordered
    chosen = [ordered[0]]
    for t in pool:
        if len(chosen) >= top:
            break
        if t.number not in {c.number for c in chosen}:
            chosen.append(t)
    baseline = baseline or baseline_trial(study)
    if baseline is not None and baseline.number not in {c.number for c in chosen}:
        chosen.append(baseline)
    return chosen
