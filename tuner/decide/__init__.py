"""Decisions from measurements that carry their uncertainty: which configuration is best, which
ones cannot be told apart, what each knob does, and what validation found.

Below ``study`` and ``report`` (both decide the same way): validation picks its candidates and
narrows its ties here, and the report explains the same decisions. Reads stored studies and
the trials' raw samples only; never deploys or measures.
"""

from __future__ import annotations

from tuner.decide.groups import (
    TIE,
    Effect,
    Group,
    best_group,
    bonferroni,
    changes_from,
    effects,
    exclusion,
    load_observations,
    reference_params,
    tails_apart,
    within,
    within_noise,
)
from tuner.decide.noise import DEFAULT_CV, NoiseModel, NoisePrior, study_noise
from tuner.decide.pick import (
    HIT,
    MISS,
    VRAM,
    baseline_trial,
    best_reuse,
    default_order,
    headroom,
    miss_ok,
    search_order,
    validation_candidates,
)
from tuner.decide.validation import (
    CandidateResult,
    ValidationSummary,
    load_validation,
    summarize_validation,
    tied_candidates,
)

__all__ = [
    "DEFAULT_CV",
    "HIT",
    "MISS",
    "TIE",
    "VRAM",
    "CandidateResult",
    "Effect",
    "Group",
    "NoiseModel",
    "NoisePrior",
    "ValidationSummary",
    "baseline_trial",
    "best_group",
    "best_reuse",
    "bonferroni",
    "changes_from",
    "default_order",
    "effects",
    "headroom",
    "exclusion",
    "load_observations",
    "load_validation",
    "miss_ok",
    "reference_params",
    "search_order",
    "study_noise",
    "summarize_validation",
    "tails_apart",
    "tied_candidates",
    "validation_candidates",
    "within",
    "within_noise",
]
