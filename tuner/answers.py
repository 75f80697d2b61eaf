"""Answers of the guard's greedy probes, and how far two deployments' answers agree.

Shared by measurement (which asks, ``tuner.measure.guard``) and the decisions and report
(which compare stored answers with the baseline's, ``tuner.decide.guard``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Agreement", "Answer", "compare"]


@dataclass(frozen=True, slots=True)
class Answer:
    """A probe's answer: its output token ids; for a tool-call probe, the tool it named
    (``None``: no call that parses: unknown tool, arguments not JSON); ``note``: why the
    probe's tool call was not asked (the server's refusal)."""

    tokens: tuple[int, ...]
    tool: str | None = None
    asked_tool: bool = False
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        """The compact form stored on the trial."""
        out: dict[str, Any] = {"t": list(self.tokens)}
        if self.asked_tool:
            out["tool"] = self.tool
        if self.note:
            out["note"] = self.note
        return out

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Answer:
        """Read back :meth:`to_json`."""
        return cls(
            tokens=tuple(int(x) for x in doc.get("t", ())),
            tool=doc.get("tool"),
            asked_tool="tool" in doc,
            note=str(doc.get("note", "")),
        )


@dataclass(frozen=True, slots=True)
class Agreement:
    """How far a trial's answers agree with the reference's.

    ``tokens_same``: over the probes, the mean share of output tokens identical up to the
    first difference (1.0: every answer identical); ``tools_same``: of the reference's tool
    calls that parsed, the share this trial also made, parsed and naming the same tool (None:
    no tool call to compare); ``first_difference``: per probe, the first differing token's
    index (None: identical).
    """

    tokens_same: float
    tools_same: float | None
    first_difference: tuple[int | None, ...]

    @property
    def changed(self) -> int:
        """How many probes answered differently."""
        return sum(d is not None for d in self.first_difference)

    @property
    def same(self) -> bool:
        """Every probe answered as the reference did, tool calls included."""
        return self.changed == 0 and self.tools_same in (None, 1.0)


def _same_prefix(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first differing token (None: identical)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def compare(reference: Sequence[Answer], mine: Sequence[Answer]) -> Agreement:
    """``mine`` against ``reference``, probe by probe (the shorter list bounds both)."""
    shares: list[float] = []
    firsts: list[int | None] = []
    calls = same_calls = 0
    for ref, ans in zip(reference, mine, strict=False):
        d = _same_prefix(ref.tokens, ans.tokens)
        firsts.append(d)
        longest = max(len(ref.tokens), len(ans.tokens))
        shares.append(1.0 if d is None or longest == 0 else d / longest)
        if ref.asked_tool and ref.tool is not None:
            calls += 1
            same_calls += ans.asked_tool and ans.tool == ref.tool
    return Agreement(
        tokens_same=sum(shares) / len(shares) if shares else float("nan"),
        tools_same=same_calls / calls if calls else None,
        first_difference=tuple(firsts),
    )
