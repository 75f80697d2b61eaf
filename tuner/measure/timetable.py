"""A fixed timetable for the load: when each conversation starts and each turn may go out.

In a closed loop (C conversations in flight, each turn sent as the one before it ends) the
arrivals depend on the answers: a deployment that answered one turn 20 ms sooner sends the next
sooner, meets other requests in its batches, and its HIT turns queue differently. Two fresh
deployments of the same flags then measure apart by as much as candidates differ. On a
timetable the load is the same data on every deployment: conversation ``k`` starts at a time
drawn once from the workload seed (gaps exponential with mean ``arrival_gap_s``, as independent
agents arrive), and turn ``j`` of it may go out no earlier than its start plus ``j`` gaps of
about ``turn_gap_s`` (uniform in 0.5-1.5 of it, as an agent's think time varies). A turn still
waits for the one before it to end; the delay past its time is recorded as its lateness.

Example:
    >>> from tuner.config.workload import SyntheticAgentSpec
    >>> t = Timetable(SyntheticAgentSpec(timing="timetable", arrival_gap_s=1.0, turn_gap_s=2.0))
    >>> t.start(0), t.send_at(0, 0) == t.start(0)
    (0.0, True)
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

from tuner.config.workload import SyntheticAgentSpec, TraceSpec

__all__ = ["Timetable"]


@dataclass(slots=True)
class Timetable:
    """The times, in seconds from the start of the measured phase, of one workload's load."""

    spec: SyntheticAgentSpec | TraceSpec
    _starts: list[float] = field(default_factory=lambda: [0.0])

    def _rng(self, *salt: object) -> random.Random:
        return random.Random(json.dumps([self.spec.seed, "timetable", *salt]))

    def start(self, conversation: int) -> float:
        """When measured conversation ``conversation`` (0, 1, ...) starts."""
        while len(self._starts) <= conversation:
            k = len(self._starts)
            gap = self._rng("arrival", k).expovariate(1.0 / self.spec.arrival_gap_s)
            self._starts.append(self._starts[-1] + gap)
        return self._starts[conversation]

    def send_at(self, conversation: int, turn: int) -> float:
        """The earliest time turn ``turn`` of ``conversation`` may go out."""
        gaps = (
            self.spec.turn_gap_s * self._rng("turn", conversation, j).uniform(0.5, 1.5)
            for j in range(1, turn + 1)
        )
        return self.start(conversation) + sum(gaps)
