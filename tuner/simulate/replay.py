"""An engine that answers from a recorded surface instead of a latency model.

Each request draws its TTFT from the samples recorded for the configuration (MISS samples for a
conversation's first turn, HIT samples for later ones), seeded per deployment so that the same
study replays the same samples.
"""

from __future__ import annotations

import hashlib
import random

from tuner.schema import SurfacePoint
from tuner.simulate.engine import Admission, EngineCounters

__all__ = ["ReplayEngine"]


class ReplayEngine(EngineCounters):
    """Recorded latencies for ``point`` (None: a configuration the surface does not hold).

    ``seed`` picks the draws; ``time_scale`` stretches them (0: answer at once);
    ``deployment_noise`` is the relative standard deviation of one factor drawn per deployment
    and applied to every latency it serves (two deployments of the same flags differ).
    """

    def __init__(
        self,
        point: SurfacePoint | None,
        name: str,
        seed: str,
        time_scale: float = 1.0,
        deployment_noise: float = 0.0,
    ) -> None:
        """An engine replaying ``point``'s recorded samples, seeded by ``seed``;
        ``deployment_noise`` scales all latencies of this deployment by one drawn factor."""
        super().__init__(name)
        self.point = point
        self.time_scale = time_scale
        self.rng = random.Random(seed)
        self.factor = max(0.1, self.rng.gauss(1.0, deployment_noise)) if deployment_noise else 1.0
        self.seen: set[str] = set()

    def admit(self, prompt: str) -> Admission:
        """A request's TTFT drawn from the recorded MISS samples for a prefix never seen, from the
        HIT samples otherwise, and the tokens the cache held."""
        words = prompt.split()
        first = hashlib.sha256(" ".join(words[:64]).encode()).hexdigest()
        p = self.point
        with self.lock:
            hit = first in self.seen  # a conversation's first turn opens with a new prefix
            self.seen.add(first)
            samples = (p.hit_ms if hit else p.miss_ms) if p else []
            ms = self.rng.choice(samples) if samples else 1.0
            cached = int(len(words) * p.hit_rate) if hit and p is not None else 0
            seconds = ms * self.factor / 1000.0  # counted as modelled; waited x time_scale
            self._count(len(words), cached, seconds)
        return Admission(seconds, len(words), cached)
