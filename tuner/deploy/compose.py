"""``compose`` deployer: the user's compose file, one service's flags rewritten per trial.

Per trial: back the file up (once), rewrite the service's ``command``, ``up -d`` the service in a
project of its own, wait healthy; on stop: ``down``, then put the file back byte-for-byte. A hard
kill leaves the backup next to the file: ``tuner restore FILE`` (or the next run) puts it back.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import docker.errors

from tuner.config.profile import ComposeConfig, Profile
from tuner.deploy.base import BaseDeployer, tail, wait_healthy
from tuner.deploy.compose_file import backup_path, restore, write_flags
from tuner.deploy.docker import container_exited, docker_client
from tuner.errors import ConfigError, DeployError, EnvironmentFault, ServerExited
from tuner.types import Endpoint

__all__ = ["ComposeDeployer", "compose_command", "project_name"]

# What compose says when the machine, not the flags, is at fault.
_ENV_FAULT = re.compile(
    r"is already in use by container|Conflict\.|address already in use|port is already allocated"
    r"|Cannot connect to the Docker daemon|no space left on device",
    re.IGNORECASE,
)


def compose_command(configured: list[str] | None = None) -> list[str]:
    """``docker compose`` (v2 plugin) if it works, else ``docker-compose`` (v1)."""
    if configured:
        return configured
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise ConfigError("neither `docker compose` nor `docker-compose` is installed", key="deployer")


def project_name(cfg: ComposeConfig) -> str:
    """The compose project the tuner runs the service in (the profile's, else its own)."""
    base = cfg.project or f"vllm-tuner-{cfg.file.resolve().parent.name}"
    return re.sub(r"[^a-z0-9_-]", "", base.lower()) or "vllm-tuner"


class ComposeDeployer(BaseDeployer):
    """The user's compose file: the tuned flags of one service rewritten per trial.

    The file is restored byte-for-byte from its backup after every trial, on failure, Ctrl-C
    and SIGTERM; after a hard kill, ``tuner restore FILE`` or the next run puts it back.
    """

    kind = "compose"
    config_type = ComposeConfig

    def __init__(self, profile: Profile, managed_flags: Collection[str] = ()) -> None:
        self._profile = profile
        self._cfg: ComposeConfig = self._config_of(profile)
        self._managed = frozenset(managed_flags)
        self._file = self._cfg.file.resolve()
        self._project = project_name(self._cfg)
        self._started = False
        self._log_path: Path | None = None

    def _compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [*compose_command(self._cfg.command), "-f", str(self._file), "-p", self._project]
        proc = subprocess.run([*argv, *args], capture_output=True, text=True, check=False)
        if check and proc.returncode != 0:
            if _ENV_FAULT.search(proc.stderr):
                raise EnvironmentFault(
                    f"{' '.join(argv[:2])} {args[0]} failed: {tail(proc.stderr, 3)}"
                )
            raise DeployError(
                f"{' '.join(argv[:2])} {args[0]} failed: {tail(proc.stderr, 3)}",
                reason="crash",
                log_tail=tail(proc.stderr),
            )
        return proc

    def start(
        self, flags: Sequence[str], workdir: Path, env: Mapping[str, str] | None = None
    ) -> Endpoint:
        self.stop()
        if env:
            raise ConfigError(
                "the compose deployer tunes flags only: set environment variables in the "
                f"compose file ({', '.join(env)})",
                key="deployer",
            )
        if not self._file.exists():
            raise ConfigError(f"compose file {self._file} not found", key="deployer.file")
        workdir.mkdir(parents=True, exist_ok=True)
        self._log_path = workdir / "server.log"
        write_flags(self._file, self._cfg.service, flags, self._managed)
        (workdir / "command.json").write_text(
            json.dumps(
                {
                    "compose_file": str(self._file),
                    "service": self._cfg.service,
                    "project": self._project,
                    "flags": list(flags),
                },
                indent=2,
            )  # fmt: skip
        )
        (workdir / "compose.yml").write_text(self._file.read_text())
        self._started = True
        self._compose("up", "-d", "--force-recreate", "--no-deps", self._cfg.service)
        cid = self._container_id()
        return Endpoint(
            base_url=self._cfg.url.rstrip("/"),
            model=self._profile.server.model_name,
            pids=self._pids(cid),
            container_id=cid,
        )

    def _container_id(self) -> str | None:
        out = self._compose("ps", "-q", self._cfg.service, check=False).stdout.split()
        return out[0] if out else None

    def _pids(self, cid: str | None) -> tuple[int, ...]:
        if cid is None:
            return ()
        with contextlib.suppress(docker.errors.DockerException):
            pid = int(docker_client().containers.get(cid).attrs["State"].get("Pid") or 0)
            return (pid,) if pid else ()
        return ()

    def _save_logs(self) -> str:
        log = self._compose("logs", "--no-color", self._cfg.service, check=False).stdout
        if self._log_path is not None and log:
            self._log_path.write_text(log)
        return log

    def _alive(self) -> None:
        cid = self._container_id()
        if cid is None:
            raise ServerExited(
                "the service has no container", reason="crash", log_tail=tail(self._save_logs())
            )
        try:
            state = docker_client().containers.get(cid).attrs["State"]
        except docker.errors.NotFound as exc:
            raise ServerExited("the service's container disappeared", reason="crash") from exc
        if state.get("Status") in ("exited", "dead"):
            exited = container_exited(state, self._save_logs(), "service")
            if exited is not None:
                raise exited

    def wait_ready(self) -> float:
        took = wait_healthy(
            self._cfg.url.rstrip("/"), timeout_s=self._cfg.health_timeout_s, alive=self._alive
        )
        self._save_logs()  # the start-up log now; the full log again at stop
        return took

    def _read_log(self) -> str:
        return self._save_logs()

    @classmethod
    def cleanup_stale(cls, profile: Profile, study: str, root: Path | None = None) -> list[str]:
        """The project a killed run left up brought down, the user's file restored."""
        cfg: ComposeConfig = cls._config_of(profile)
        if not backup_path(cfg.file).exists():
            return []
        cls(profile).reclaim()
        return [f"{cfg.file} restored"]

    def reclaim(self) -> None:
        """Bring down the project an earlier, killed run left up; restore the file."""
        self._started = True
        self.stop()

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        try:
            self._save_logs()
            self._compose("down", "-t", str(int(self._cfg.stop_timeout_s)), check=False)
        finally:
            restore(self._file)  # the user's file, byte-for-byte, whatever happened
