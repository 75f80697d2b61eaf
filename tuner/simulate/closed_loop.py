"""A closed-loop load on a :class:`~tuner.simulate.scheduler.Scheduler`, in virtual time.

The same load shape the measurement client drives over HTTP (C conversations in flight, the
next turn sent when the previous answer ends, a new conversation when one finishes), run as a
discrete-event loop with no thread and no clock: for unit tests and benchmarks that need to see
what the scheduling flags do under concurrency, deterministically and in milliseconds.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from tuner.simulate.scheduler import Scheduler, SimRequest, block_hashes

__all__ = ["Served", "closed_loop"]


@dataclass(frozen=True, slots=True)
class Served:
    """One request's outcome (times in seconds of virtual time)."""

    conversation: int
    turn: int
    ttft_s: float
    e2e_s: float
    queue_s: float
    max_gap_s: float  # the longest wait between two of its tokens
    prompt_tokens: int
    cached_tokens: int
    preemptions: int

    @property
    def klass(self) -> str:
        """The request class the measurement uses: a conversation's first turn or a later one."""
        return "first_turn" if self.turn == 0 else "continuation"


def closed_loop(
    scheduler: Scheduler,
    conversations: Sequence[Sequence[Sequence[str]]],
    *,
    concurrency: int,
    max_tokens: int,
    think_s: float = 0.0,
    stagger_s: float = 0.0,
) -> list[Served]:
    """Serve ``conversations`` (each a list of prompts, as word lists) ``concurrency`` at a time.

    The first ``concurrency`` conversations start ``stagger_s`` apart; each later turn is sent
    ``think_s`` after the previous answer ended; a waiting conversation starts when one ends.
    """
    arrivals: list[tuple[float, int, int]] = []  # (time, conversation, turn)
    waiting = list(range(len(conversations)))[::-1]
    for k in range(min(concurrency, len(conversations))):
        heapq.heappush(arrivals, (k * stagger_s, waiting.pop(), 0))
    where: dict[int, tuple[int, int]] = {}
    out: list[Served] = []
    now = 0.0
    while arrivals or scheduler.busy:
        while arrivals and arrivals[0][0] <= now:
            at, conv, turn = heapq.heappop(arrivals)
            words = conversations[conv][turn]
            req = SimRequest(block_hashes(words), len(words), max_tokens, arrival=at)
            where[id(req)] = (conv, turn)
            scheduler.submit(req)
        if not scheduler.busy:
            now = arrivals[0][0]
            continue
        duration, produced = scheduler.step(now)
        now += duration
        for s in produced:
            if not s.finished:
                continue
            r = s.request
            conv, turn = where.pop(id(r))
            out.append(
                Served(
                    conv,
                    turn,
                    ttft_s=r.ttft if r.ttft is not None else float("nan"),
                    e2e_s=now - r.arrival,
                    queue_s=(now if r.admitted_at is None else r.admitted_at) - r.arrival,
                    max_gap_s=r.max_gap,
                    prompt_tokens=r.prompt_tokens,
                    cached_tokens=r.cached_tokens,
                    preemptions=r.preemptions,
                )
            )
            if turn + 1 < len(conversations[conv]):
                heapq.heappush(arrivals, (now + think_s, conv, turn + 1))
            elif waiting:
                heapq.heappush(arrivals, (now, waiting.pop(), 0))
    return out
