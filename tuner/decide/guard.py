"""The answer guard's verdict on stored trials: how far a trial's answers agree with the
baseline's.

Each deployed trial stores its guard answers (``tuner.measure.guard``); the reference is the
baseline seed's deployment. The study records the agreement when it tells a trial (so that
the objective file can constrain it); the report reads it back here, and computes it for a
trial measured before the baseline was.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from tuner.answers import Agreement, Answer, compare
from tuner.decide.pick import baseline_trial
from tuner.trial import Attr

__all__ = ["NO_REFERENCE", "agreement", "answers_of", "baseline_answers", "guard_attrs",
           "guard_line"]  # fmt: skip

NO_REFERENCE = "no baseline answers yet"  # the note of a trial told before the baseline


def answers_of(t: FrozenTrial | dict[str, Any]) -> list[Answer] | None:
    """The guard answers stored on a trial (or its attributes); None when it has none."""
    attrs = t if isinstance(t, dict) else t.user_attrs
    docs = attrs.get(Attr.GUARD_ANSWERS)
    return [Answer.from_json(d) for d in docs] if isinstance(docs, list) and docs else None


def guard_attrs(
    reference: Sequence[Answer] | None, mine: Sequence[Answer] | None
) -> dict[str, Any]:
    """The attributes a trial records: its answers, and their agreement with ``reference``
    (``answers_same``, ``tools_same``, ``answers_changed``), or why there is none."""
    if mine is None:
        return {}
    out: dict[str, Any] = {Attr.GUARD_ANSWERS: [a.to_json() for a in mine]}
    notes = sorted({a.note for a in mine if a.note})
    if reference is None:
        out[Attr.GUARD_NOTE] = NO_REFERENCE
        return out
    agree = compare(reference, mine)
    out.update(
        answers_same=agree.tokens_same,
        tools_same=agree.tools_same,
        answers_changed=agree.changed,
    )
    if notes:
        out[Attr.GUARD_NOTE] = f"tool calls not compared: {notes[0]}"
    return out


def baseline_answers(study: optuna.Study) -> list[Answer] | None:
    """The baseline seed's stored answers: every trial's reference (None: none yet)."""
    base = baseline_trial(study)
    return answers_of(base) if base is not None else None


def agreement(reference: Sequence[Answer] | None, t: FrozenTrial) -> Agreement | None:
    """``t``'s stored answers against ``reference`` (None: either is missing)."""
    mine = answers_of(t)
    return compare(reference, mine) if reference is not None and mine is not None else None


def guard_line(study: optuna.Study, t: FrozenTrial) -> str | None:
    """One line on whether ``t`` answers as the baseline did (None: nothing to say)."""
    agree = agreement(baseline_answers(study), t)
    if agree is None or math.isnan(agree.tokens_same):
        return None
    n = len(agree.first_difference)
    tools = f"; tool calls {agree.tools_same:.0%} the same" if agree.tools_same is not None else ""
    if agree.same:
        return f"Answers: the same as the baseline's on all {n} greedy probes{tools}."
    return (
        f"Answers CHANGED: {agree.changed} of {n} greedy probes differ from the baseline's "
        f"({agree.tokens_same:.0%} of output tokens identical up to the first difference"
        f"{tools}). Check the answers before deploying it."
    )
