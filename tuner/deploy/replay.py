"""``replay`` deployer: serves a recorded surface as a simulated OpenAI-compatible server.

A surface (``tuner export-surface``) holds, per configuration, the raw TTFT samples of the first
turns (MISS) and later turns (HIT), the prefix-cache hit rate, the memory, the start-up time, or
the failure reason. Each replayed request draws its TTFT from those samples (seeded), so a study
over a recorded sweep runs without vLLM, and a user can replay their own past sweep to choose
sampler settings.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.config.profile import Profile, ReplayConfig
from tuner.deploy.base import Endpoint, InProcessDeployer, wait_healthy
from tuner.errors import ConfigError, ServerExited
from tuner.testing import EngineCounters, FakeVLLMServer, ServerModel  # the HTTP side

__all__ = ["ReplayDeployer", "Surface", "SurfacePoint", "load_surface", "point_key"]


def point_key(flags: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """Identity of a deployed configuration: its trial flags and environment."""
    return json.dumps({"flags": list(flags), "env": dict(sorted((env or {}).items()))})


@dataclass(frozen=True, slots=True)
class SurfacePoint:
    params: dict[str, Any]
    flags: list[str]
    env: dict[str, str]
    status: str  # "ok" or a failure reason (crash, oom, invalid, timeout, request_error)
    miss_ms: list[float] = field(default_factory=list)
    hit_ms: list[float] = field(default_factory=list)
    hit_rate: float = 0.0
    vram_mib: float = 0.0
    startup_s: float = 0.0
    error: str = ""

    @property
    def key(self) -> str:
        return point_key(self.flags, self.env)


@dataclass(frozen=True, slots=True)
class Surface:
    name: str
    description: str
    space: str
    objectives: list[str]
    points: list[SurfacePoint]

    def by_key(self) -> dict[str, SurfacePoint]:
        return {p.key: p for p in self.points}

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "space": self.space,
            "objectives": self.objectives,
            "points": [
                {k: getattr(p, k) for k in SurfacePoint.__dataclass_fields__} for p in self.points
            ],
        }


def load_surface(path: Path) -> Surface:
    """Read a surface JSON file (ConfigError naming the file when it is not one)."""
    try:
        doc = json.loads(path.read_text())
        points = [SurfacePoint(**p) for p in doc["points"]]
        return Surface(
            name=doc["name"],
            description=doc.get("description", ""),
            space=doc.get("space", ""),
            objectives=list(doc.get("objectives", [])),
            points=points,
        )
    except FileNotFoundError as exc:
        raise ConfigError("surface file not found", file=path) from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"not a surface file: {exc}", file=path) from exc


class ReplayDeployer(InProcessDeployer):
    """Looks the trial's configuration up in the surface and serves (or fails) like it did."""

    kind = "replay"

    def __init__(self, profile: Profile) -> None:
        if not isinstance(profile.deployer, ReplayConfig):
            raise TypeError(f"ReplayDeployer needs a replay profile, got {profile.deployer.kind}")
        self._profile = profile
        self._cfg: ReplayConfig = profile.deployer
        self._points = load_surface(self._cfg.surface).by_key()
        self._server: Any = None
        self._point: SurfacePoint | None = None
        self._log_path: Path | None = None
        self._starts = 0

    def start(
        self, flags: Sequence[str], workdir: Path, env: Mapping[str, str] | None = None
    ) -> Endpoint:
        self.stop()
        workdir.mkdir(parents=True, exist_ok=True)
        self._log_path = workdir / "server.log"
        self._point = self._points.get(point_key(flags, env))
        self._starts += 1
        status = self._point.status if self._point else "crash"
        note = self._point.error if self._point else "configuration not in the recorded surface"
        self._log_path.write_text(f"replay of {self._cfg.surface}: {status} {note}\n")
        (workdir / "command.json").write_text(json.dumps({"replay": list(flags), "env": env or {}}))
        state = _ReplayState(self._point, self._profile.server.model_name, self._cfg, self._starts)
        self._server = FakeVLLMServer(state=state)
        vram = self._point.vram_mib if self._point else 0.0
        return Endpoint(
            base_url=self._server.base_url,
            model=self._profile.server.model_name,
            extra={"vram_mib": str(vram)},
        )

    def wait_ready(self) -> float:
        if self._server is None:
            raise ServerExited("server was not started", reason="crash")
        p = self._point
        startup = (p.startup_s if p else 0.0) * self._cfg.time_scale
        time.sleep(startup)
        if p is None or p.status != "ok":
            reason = p.status if p else "crash"
            raise ServerExited(
                f"replayed failure ({reason})", reason=reason, log_tail=self.log_tail()
            )
        wait_healthy(self._server.base_url, timeout_s=10.0, alive=lambda: None)
        return p.startup_s  # the recorded start-up, whatever the time scale


class _ReplayState(EngineCounters):
    """What the fake HTTP server asks per request: recorded latencies instead of a model."""

    def __init__(self, point: SurfacePoint | None, name: str, cfg: ReplayConfig, n: int) -> None:
        super().__init__(name)
        self.point = point
        self.model = ServerModel(decode_ms=0.0)
        self.fail_chat = False
        self.time_scale = cfg.time_scale
        # Seeded per deployment: the same study with the same seed replays the same samples.
        self.rng = random.Random(f"{cfg.seed}:{n}:{point.key if point else ''}")
        self.seen: set[str] = set()

    def admit(self, prompt: str) -> tuple[float, int]:
        words = prompt.split()
        first = hashlib.sha256(" ".join(words[:64]).encode()).hexdigest()
        p = self.point
        with self.lock:
            hit = first in self.seen  # a new conversation starts with a salted system prompt
            self.seen.add(first)
            samples = (p.hit_ms if hit else p.miss_ms) if p else []
            ms = self.rng.choice(samples) if samples else 1.0
            self.requests += 1
            self.queries += len(words)
            if hit and p is not None:
                self.hits += len(words) * p.hit_rate
        return ms / 1000.0 * self.time_scale, len(words)
