"""``external`` deployer: an already running server, measured as it is and never restarted."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from tuner.config.profile import ExternalConfig, Profile
from tuner.config.space import ParamValue, SearchSpace
from tuner.deploy.base import BaseDeployer, wait_healthy
from tuner.errors import ConfigError, EnvironmentFault, StartupTimeout
from tuner.types import Endpoint

__all__ = ["ExternalDeployer"]


class ExternalDeployer(BaseDeployer):
    """Points the measurement at ``deployer.url``. ``flags`` are recorded, not applied."""

    kind = "external"
    config_type = ExternalConfig
    one_server = True  # the user's running server

    @classmethod
    def describe(cls, profile: Profile) -> str:
        """The server's URL."""
        cfg: ExternalConfig = cls._config_of(profile)
        return f"the server at {cfg.url}"

    @classmethod
    def fixed_params(cls, profile: Profile, space: SearchSpace) -> dict[str, ParamValue] | None:
        """The configuration the server runs (``deployer.params``), checked against ``space``."""
        cfg: ExternalConfig = cls._config_of(profile)
        if cfg.params is None:
            raise ConfigError(
                "the external deployer measures one running server: set deployer.params to the "
                "configuration it runs",
                key="deployer.params",
            )
        space.check(cfg.params, where="deployer.params")
        return dict(cfg.params)

    def __init__(self, profile: Profile, managed_flags: Collection[str] = ()) -> None:
        self._profile = profile
        self._cfg: ExternalConfig = self._config_of(profile)

    def start(
        self, flags: Sequence[str], workdir: Path, env: Mapping[str, str] | None = None
    ) -> Endpoint:
        """Nothing is started: the measurement is pointed at the user's server, and the trial
        folder says so."""
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "server.log").write_text(
            f"external server at {self._cfg.url}; its flags are whatever it was started with\n"
        )
        pids = (self._cfg.pid,) if self._cfg.pid else ()
        return Endpoint(
            base_url=self._cfg.url.rstrip("/"), model=self._profile.server.model_name, pids=pids
        )

    def wait_ready(self) -> float:
        """Seconds until the user's server answers /health; one that never does is the machine's
        fault, not the configuration's."""
        url = self._cfg.url.rstrip("/")
        try:
            return wait_healthy(url, timeout_s=self._cfg.health_timeout_s, alive=lambda: None)
        except StartupTimeout as exc:
            # Nothing the configuration did: the server the user runs does not answer.
            raise EnvironmentFault(f"the external server at {url} is unreachable: {exc}") from exc

    def stop(self) -> None:
        """Nothing: the server is the user's."""
        return None  # not ours to stop
