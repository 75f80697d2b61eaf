"""``compose`` deployer: the user's compose file, one service's flags rewritten per trial.

It works inside the user's own project (named as compose names it), on the tuned service only:
other services are never restarted. Before the first trial it notes whether the service was
running (a state file next to the compose file). Per trial: back the file up, rewrite the
service's ``command``, ``up -d --no-deps --force-recreate SERVICE``, wait healthy (the service's
own ``healthcheck:`` too, when it has one); on stop: ``stop`` + ``rm -f`` the service, then put
the file back byte-for-byte. When the study ends, fails or is interrupted, :meth:`hand_back`
brings the service back as it was (running its original configuration if it was running). A
hard kill leaves the backup and the state file: ``tuner restore FILE`` (or the next run) does
the same.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import docker.errors
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from tuner.config.profile import DEFAULT_DEPLOYMENT, DEFAULT_PORT, ComposeConfig, Profile
from tuner.deploy.base import BaseDeployer, tail, wait_healthy
from tuner.deploy.compose_file import restore, write_flags
from tuner.deploy.docker import container_exited, docker_client
from tuner.errors import (
    ConfigError,
    DeployError,
    EnvironmentFault,
    ServerExited,
    StartupTimeout,
)
from tuner.types import Endpoint

__all__ = ["ComposeDeployer", "compose_command", "project_name", "state_path"]

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
    """The user's project, resolved as compose resolves it: the profile's ``project``, else
    ``COMPOSE_PROJECT_NAME``, else the file's top-level ``name:``, else its folder's name."""
    base = (
        cfg.project
        or os.environ.get("COMPOSE_PROJECT_NAME")
        or _top_level_name(cfg.file)
        or cfg.file.resolve().parent.name
    )
    return re.sub(r"[^a-z0-9_-]", "", base.lower()).lstrip("_-") or "default"


def _top_level_name(file: Path) -> str | None:
    """The compose file's own top-level ``name:`` (variables expanded), which names its project;
    None without one or for a file that does not parse."""
    with contextlib.suppress(OSError, YAMLError):
        doc = YAML(typ="safe").load(file.read_text())
        name = doc.get("name") if isinstance(doc, dict) else None
        if isinstance(name, str):
            return os.path.expandvars(name)
    return None


def _recreate(service: str) -> list[str]:
    """Compose arguments that (re)create the tuned service alone: its dependencies untouched."""
    return ["up", "-d", "--no-deps", "--force-recreate", service]


def _remove(service: str, stop_timeout_s: float) -> list[list[str]]:
    """Compose arguments that stop and remove the tuned service alone (never ``down``)."""
    return [["stop", "-t", str(int(stop_timeout_s)), service], ["rm", "-f", service]]


def _state_of(cid: str | None) -> dict[str, Any]:
    """The container's ``State`` (empty when there is none or the engine cannot say)."""
    if cid is not None:
        with contextlib.suppress(docker.errors.DockerException):
            state: dict[str, Any] = docker_client().containers.get(cid).attrs["State"]
            return state
    return {}


def state_path(file: Path) -> Path:
    """Where the service's state before the study is kept while a study runs."""
    return file.with_name(file.name + ".vllm-tuner.state.json")


class ComposeDeployer(BaseDeployer):
    """The user's compose file: the tuned flags of one service rewritten per trial.

    The file is restored byte-for-byte from its backup after every trial, on failure, Ctrl-C
    and SIGTERM; after a hard kill, ``tuner restore FILE`` or the next run puts it back.
    """

    kind = "compose"
    config_type = ComposeConfig
    one_server = True  # the user's one service

    def __init__(self, profile: Profile, managed_flags: Collection[str] = ()) -> None:
        """A deployer for the profile's compose file and service; ``managed_flags`` are the flags
        the search space owns in the service's command."""
        self._profile = profile
        self._cfg: ComposeConfig = self._config_of(profile)
        self._managed = frozenset(managed_flags)
        self._file = self._cfg.file.resolve()
        self._project = project_name(self._cfg)
        self._started = False
        self._log_path: Path | None = None

    def _compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``docker compose`` (or v1) on the project with ``args``. With ``check``, a failure
        is a DeployError, or an EnvironmentFault when compose says the machine is at fault (a
        name or port in use)."""
        cmd = compose_command(self._cfg.command)
        argv = [*cmd, "-f", str(self._file), "-p", self._project]
        proc = subprocess.run([*argv, *args], capture_output=True, text=True, check=False)
        if check and proc.returncode != 0:
            what = f"{' '.join(cmd)} {args[0]} (project {self._project})"
            fault = next(
                (ln.strip() for ln in proc.stderr.splitlines() if _ENV_FAULT.search(ln)), None
            )
            if fault is not None:  # the one line that says what is in the way
                raise EnvironmentFault(f"{what} failed: {fault}")
            raise DeployError(
                f"{what} failed: {tail(proc.stderr, 3)}",
                reason="crash",
                log_tail=tail(proc.stderr),
            )
        return proc

    def start(
        self, flags: Sequence[str], workdir: Path, env: Mapping[str, str] | None = None
    ) -> Endpoint:
        """Rewrite the service's command with the trial's flags (the original file backed up first,
        its state noted), bring the service up, and point at its URL."""
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
        if not state_path(self._file).exists():
            self._snapshot()  # before anything changes: what hand_back returns to
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
        self._compose(*_recreate(self._cfg.service))
        cid = self._container_id()
        return Endpoint(
            base_url=self._cfg.url.rstrip("/"),
            model=self._profile.server.model_name,
            pids=self._pids(cid),
            container_id=cid,
        )

    def _container_id(self) -> str | None:
        """The service's container in the project, if it has one."""
        out = self._compose("ps", "-q", self._cfg.service, check=False).stdout.split()
        return out[0] if out else None

    def _pids(self, cid: str | None) -> tuple[int, ...]:
        """The container's main process, for the memory measurement."""
        pid = int(_state_of(cid).get("Pid") or 0)
        return (pid,) if pid else ()

    def _save_logs(self) -> str:
        """The service's log, written to the trial folder and returned."""
        log = self._compose("logs", "--no-color", self._cfg.service, check=False).stdout
        if self._log_path is not None and log:
            self._log_path.write_text(log)
        return log

    def _alive(self) -> None:
        """ServerExited when the service's container is gone or has exited (classified from its
        exit status and log)."""
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
        """Seconds until the service answers /health and its container's own healthcheck (if any)
        is healthy."""
        t0 = time.perf_counter()
        wait_healthy(
            self._cfg.url.rstrip("/"), timeout_s=self._cfg.health_timeout_s, alive=self._alive
        )
        self._wait_container_healthy(t0)
        self._save_logs()  # the start-up log now; the full log again at stop
        return time.perf_counter() - t0

    def _wait_container_healthy(self, t0: float) -> None:
        """With a ``healthcheck:`` in the file, also wait for compose's own verdict."""
        while True:
            status = (_state_of(self._container_id()).get("Health") or {}).get("Status")
            if status in (None, "healthy"):
                return
            if status == "unhealthy":
                raise ServerExited(
                    "the service's healthcheck reports unhealthy", reason="crash",
                    log_tail=tail(self._save_logs()),
                )  # fmt: skip
            if time.perf_counter() - t0 > self._cfg.health_timeout_s:
                raise StartupTimeout(
                    f"healthcheck not healthy after {self._cfg.health_timeout_s:.0f} s"
                )
            self._alive()
            time.sleep(0.5)

    def _read_log(self) -> str:
        """The service's log, fetched from compose (its container writes it, not us)."""
        return self._save_logs()

    @classmethod
    def cleanup_stale(
        cls, profile: Profile, study: str, root: Path | None = None, keep: Collection[Path] = ()
    ) -> list[str]:
        """A killed run's trial service stopped, the user's file and service given back."""
        return cls.hand_back(profile)  # [] when no earlier run held the file

    def _snapshot(self) -> None:
        """Note, once, how the user's service was before the first trial (running or not, its
        container, the compose command), so that the study can hand it back as it was."""
        cid = self._container_id()
        running = bool(_state_of(cid).get("Running"))
        state = {
            "project": self._project,
            "service": self._cfg.service,
            "command": compose_command(self._cfg.command),
            "was_running": running,
            "container": cid,
        }
        state_path(self._file).write_text(json.dumps(state, indent=2))

    @classmethod
    def describe(cls, profile: Profile) -> str:
        """The service and its file."""
        cfg: ComposeConfig = cls._config_of(profile)
        return f"service {cfg.service!r} of {cfg.file}"

    @classmethod
    def hints(cls, profile: Profile) -> dict[str, Any]:
        """The port the service publishes."""
        cfg: ComposeConfig = cls._config_of(profile)
        return {**DEFAULT_DEPLOYMENT, "port": urlsplit(cfg.url).port or DEFAULT_PORT}

    @classmethod
    def keep(
        cls, profile: Profile, flags: Sequence[str] | None, managed: Collection[str], why: str
    ) -> str:
        """The file set to ``flags`` with a comment saying so, and the service recreated from
        it (the others untouched)."""
        cfg: ComposeConfig = cls._config_of(profile)
        if flags is None:
            return ""
        note = (
            f"vllm-tuner: service {cfg.service!r} set to the recommended configuration ({why}).\n"
            f"The original file is {cfg.file.name}.vllm-tuner.bak; "
            f"`tuner restore {cfg.file}` puts it back."
        )
        write_flags(cfg.file, cfg.service, list(flags), managed, note)
        dep = cls(profile)
        dep._compose(*_recreate(dep._cfg.service))
        return f"{cfg.file}: set to the recommended configuration ({why}) {' '.join(flags)}"

    @classmethod
    def hand_back(cls, profile: Profile) -> list[str]:
        """The file restored; the service stopped or running its original configuration, as it
        was before the study's first trial."""
        cfg: ComposeConfig = cls._config_of(profile)
        return hand_back_file(cfg.file, cfg.stop_timeout_s)

    def stop(self) -> None:
        """Stop and remove the tuned service only: never ``down``, never the other services."""
        if not self._started:
            return
        self._started = False
        try:
            self._save_logs()
            for args in _remove(self._cfg.service, self._cfg.stop_timeout_s):
                self._compose(*args, check=False)
        finally:
            restore(self._file)  # the user's file, byte-for-byte, whatever happened


def hand_back_file(file: Path, stop_timeout_s: float = 10.0) -> list[str]:
    """Give back what a study took over through ``file``: the file from its backup, and the
    service as the state file describes it. What was done ([] when nothing was held)."""
    file = file.resolve()
    done = [f"{file} restored"] if restore(file) else []
    sp = state_path(file)
    if not sp.exists():
        return done
    st = json.loads(sp.read_text())
    argv = [*st["command"], "-f", str(file), "-p", st["project"]]
    service = st["service"]
    run = functools.partial(subprocess.run, capture_output=True, text=True, check=False)
    if st["was_running"]:
        proc = run([*argv, *_recreate(service)])
        if proc.returncode != 0:
            raise DeployError(
                f"could not bring {service!r} back up: {tail(proc.stderr, 3)}", reason="crash"
            )
        done.append(f"service {service!r} running its original configuration again")
    else:
        for args in _remove(service, stop_timeout_s):
            run([*argv, *args])
        done.append(f"service {service!r} left stopped, as it was")
    sp.unlink()
    return done
