"""``replay`` deployer: serves a recorded surface as a simulated OpenAI-compatible server.

A surface (``tuner export-surface``, format in ``tuner.schema``) holds, per configuration, the
raw TTFT samples of the first turns (MISS) and later turns (HIT), the prefix-cache hit rate, the
memory, the start-up time, or the failure reason. Each replayed request draws its TTFT from
those samples (``tuner.simulate.ReplayEngine``, seeded), so a study over a recorded sweep runs
without vLLM, and a user can replay their own past sweep to choose sampler settings.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from tuner.config.profile import Profile, ReplayConfig
from tuner.config.space import SearchSpace
from tuner.deploy.base import InProcessDeployer, wait_healthy
from tuner.errors import ConfigError, ServerExited
from tuner.schema import SurfacePoint, TrialFolder, load_surface, point_key, write_json
from tuner.simulate import ReplayEngine, SimulatedServer
from tuner.types import Endpoint

__all__ = ["ReplayDeployer"]


class ReplayDeployer(InProcessDeployer):
    """Looks the trial's configuration up in the surface and serves (or fails) like it did."""

    kind = "replay"
    config_type = ReplayConfig

    @classmethod
    def build(cls, profile: Profile) -> str | None:
        """The recorded surface replayed."""
        cfg: ReplayConfig = cls._config_of(profile)
        return f"replay of {cfg.surface.name}"

    @classmethod
    def check(cls, profile: Profile, space: SearchSpace) -> None:
        """The surface must hold points of ``space``, or every trial would 'crash'."""
        cfg: ReplayConfig = cls._config_of(profile)
        points = load_surface(cfg.surface).by_key()
        if not any(point_key(space.to_flags(p), space.to_env(p)) in points for p in space.points()):
            raise ConfigError(
                f"the surface {cfg.surface} holds no configuration of space {space.name!r}: it "
                "was recorded over another space",
                key="deployer.surface",
            )

    def __init__(self, profile: Profile, managed_flags: Collection[str] = ()) -> None:
        """A deployer that serves the profile's recorded surface."""
        self._profile = profile
        self._cfg: ReplayConfig = self._config_of(profile)
        self._points = load_surface(self._cfg.surface).by_key()
        self._server: SimulatedServer | None = None
        self._point: SurfacePoint | None = None
        self._log_path: Path | None = None
        self._starts = 0

    def start(
        self, flags: Sequence[str], workdir: Path, env: Mapping[str, str] | None = None
    ) -> Endpoint:
        """Serve the surface's point for these flags (its recorded samples, memory and start-up),
        or, for a point the surface lacks or recorded as failed, a server that fails the same
        way."""
        self.stop()
        folder = TrialFolder(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self._log_path = folder.server_log
        self._point = p = self._points.get(point_key(list(flags), dict(env or {})))
        self._starts += 1
        status = p.status if p else "crash"
        note = p.error if p else "configuration not in the recorded surface"
        self._log_path.write_text(f"replay of {self._cfg.surface}: {status} {note}\n")
        write_json(folder.command, {"replay": list(flags), "env": dict(env or {})})
        # Seeded per deployment (the trial folder names it: trials/0003, validation/trials/0001):
        # the same study with the same seed replays the same samples, and every deployment of
        # one configuration draws its own.
        where = "/".join(workdir.parts[-3:])
        seed = f"{self._cfg.seed}:{where}:{self._starts}:{p.key if p else ''}"
        name = self._profile.server.model_name
        engine = ReplayEngine(p, name, seed, self._cfg.time_scale, self._cfg.deployment_noise)
        self._server = SimulatedServer(engine)
        return Endpoint(
            base_url=self._server.base_url,
            model=name,
            reported_vram_mib=p.vram_mib if p else None,
        )

    def wait_ready(self) -> float:
        """The recorded start-up time (scaled), then the recorded failure if the point had one."""
        if self._server is None:
            raise ServerExited("server was not started", reason="crash")
        p = self._point
        time.sleep((p.startup_s if p else 0.0) * self._cfg.time_scale)
        if p is None or p.status != "ok":
            reason = p.status if p else "crash"
            raise ServerExited(
                f"replayed failure ({reason})", reason=reason, log_tail=self.log_tail()
            )
        wait_healthy(self._server.base_url, timeout_s=10.0, alive=lambda: None)
        return p.startup_s  # the recorded start-up, whatever the time scale
