"""``docker`` deployer: one labelled container per trial (docker SDK), always removed."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests
from docker.models.containers import Container
from docker.types import DeviceRequest

from tuner.config.profile import DEFAULT_DEPLOYMENT, DEFAULT_PORT, DockerConfig, Profile
from tuner.deploy.base import BaseDeployer, classify_exit, confined, exited_message, said, tail
from tuner.deploy.local import deferred_interrupts
from tuner.errors import ConfigError, DeployError, EnvironmentFault, ServerExited, TunerError
from tuner.types import Endpoint, WorkerSlot

__all__ = ["LABEL", "DockerDeployer", "docker_client", "remove_containers"]

LABEL = "io.vllm-tuner.managed"  # on every container the tool starts, and only those
STUDY_LABEL = "io.vllm-tuner.study"
TRIAL_LABEL = "io.vllm-tuner.trial"


def docker_client(base_url: str | None = None) -> docker.DockerClient:
    """A client for the engine; an EnvironmentFault (one line) when it cannot be reached."""
    _check_socket(_engine_url(base_url))
    client: docker.DockerClient | None = None
    try:
        client = docker.DockerClient(base_url=base_url) if base_url else docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        if client is not None:
            client.close()  # its connection pool would outlive the error
        raise EnvironmentFault(f"cannot reach the Docker Engine: {exc}") from exc
    return client


# What the SDK raises when the engine is gone: its own errors, and requests' (a connection
# aborted mid-call is not wrapped).
ENGINE_GONE = (docker.errors.DockerException, requests.exceptions.RequestException)


def engine_gone(exc: BaseException, host: str | None) -> EnvironmentFault:
    """One line naming the Docker Engine for an error of the SDK."""
    where = _engine_url(host)
    why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return EnvironmentFault(f"the Docker Engine at {where} stopped answering: {why}")


def _engine_url(host: str | None) -> str:
    """The engine the SDK talks to: the profile's ``docker_host``, else the environment's."""
    return host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def _check_socket(url: str) -> None:
    """Connect to a unix-socket engine once ourselves: the SDK's unix transport leaves its socket
    open when the connect is refused (warnings as errors turn that into a test failure)."""
    if not url.startswith("unix://"):
        return
    path = url.removeprefix("unix://")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        try:
            sock.connect(path)
        except OSError as exc:
            raise EnvironmentFault(f"cannot reach the Docker Engine at {path}: {exc}") from exc


def remove_containers(
    client: docker.DockerClient, study: str | None = None, keep: Collection[str] = ()
) -> list[str]:
    """Force-remove the containers this tool started (of one study, or all) but those of the
    trial folders named in ``keep``; their names."""
    labels = [f"{LABEL}=true"] + ([f"{STUDY_LABEL}={study}"] if study else [])
    removed = []
    # The listing's own fields (the low-level API): a container removed meanwhile by its
    # worker must not fail the listing with NotFound.
    for c in client.api.containers(all=True, filters={"label": labels}):
        if (c.get("Labels") or {}).get(TRIAL_LABEL) in keep:
            continue
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_container(c["Id"], force=True)
            removed.append(str((c.get("Names") or [c["Id"][:12]])[0]).lstrip("/"))
    return removed


def container_exited(state: dict[str, Any], log: str, what: str) -> ServerExited | None:
    """ServerExited for a container whose State says it stopped (OOMKilled or the log decide
    the reason), None while it runs."""
    if state.get("Status") not in ("exited", "dead"):
        return None
    rc = int(state.get("ExitCode", -1))
    reason = "oom" if state.get("OOMKilled") else classify_exit(rc, log)
    return ServerExited(exited_message(what, rc, reason, log), reason=reason, log_tail=tail(log))


def _gpu_requests(gpus: str | list[str]) -> list[DeviceRequest]:
    """The docker SDK's device requests for ``gpus``: none, all, or these ids."""
    if gpus == "none":
        return []
    if gpus == "all":
        return [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    return [DeviceRequest(device_ids=list(gpus), capabilities=[["gpu"]])]


def _volumes(spec: dict[str, str]) -> dict[str, dict[str, str]]:
    """The profile's ``host: target[:mode]`` volumes as the docker SDK takes them."""
    out = {}
    for host, target in spec.items():
        bind, _, mode = target.partition(":")
        out[os.path.expanduser(host)] = {"bind": bind, "mode": mode or "rw"}
    return out


class DockerDeployer(BaseDeployer):
    """Runs the image with the profile's args plus the trial's flags; logs streamed to the trial."""

    kind = "docker"
    config_type = DockerConfig

    def __init__(self, profile: Profile, managed_flags: Collection[str] = ()) -> None:
        """A deployer for the profile's image; the Docker client is opened at first use."""
        self._profile = profile
        self._cfg: DockerConfig = self._config_of(profile)
        self._client: docker.DockerClient | None = None
        self._container: Container | None = None
        self._log_path: Path | None = None
        self._pump: threading.Thread | None = None
        self._base_url = ""

    @classmethod
    def cleanup_stale(
        cls, profile: Profile, study: str, root: Path | None = None, keep: Collection[Path] = ()
    ) -> list[str]:
        """The study's labelled containers a killed run left behind, removed (not those of
        trials in ``keep``: another worker's)."""
        cfg: DockerConfig = cls._config_of(profile)
        return remove_containers(docker_client(cfg.docker_host), study, {p.name for p in keep})

    @classmethod
    def reclaim(
        cls, roots: Sequence[Path], study: str | None, profile: Profile | None
    ) -> list[str]:
        """The labelled containers of the study (or of every study), removed, on the engine of
        ``profile`` when it is a docker one, else the environment's."""
        cfg = profile.deployer if profile is not None else None
        host = cfg.docker_host if isinstance(cfg, DockerConfig) else None
        try:
            client = docker_client(host)
        except TunerError as exc:
            return [f"containers: not checked ({exc})"]
        return [said("removed", "container", remove_containers(client, study))]

    @classmethod
    def confine(cls, profile: Profile, slot: WorkerSlot) -> Profile:
        """The slot's GPUs as the container's device ids; a fixed port + the slot's index."""
        cfg: DockerConfig = cls._config_of(profile)
        return confined(profile, cfg, slot, lambda gpus: {"gpus": list(gpus)})

    @classmethod
    def build(cls, profile: Profile) -> str | None:
        """The image as named in the profile (a tag that is moved is the user's to rename)."""
        cfg: DockerConfig = cls._config_of(profile)
        return f"image {cfg.image}"

    @classmethod
    def hints(cls, profile: Profile) -> dict[str, Any]:
        """The image, GPUs, port, volumes, variables and shared memory the recommendation's
        ``docker run`` line repeats."""
        cfg: DockerConfig = cls._config_of(profile)
        port = cfg.container_port if cfg.network == "bridge" else (cfg.port or DEFAULT_PORT)
        return {**DEFAULT_DEPLOYMENT, "image": cfg.image, "gpus": cfg.gpus, "port": port,
                "volumes": dict(cfg.volumes), "pass_env": list(cfg.pass_env),
                "shm_size": cfg.shm_size}  # fmt: skip

    @property
    def client(self) -> docker.DockerClient:
        """The Docker Engine client, opened at first use (an EnvironmentFault when unreachable)."""
        if self._client is None:
            self._client = docker_client(self._cfg.docker_host)
        return self._client

    def server_args(self, flags: Sequence[str], port: int) -> list[str]:
        """The server's arguments inside the container: the profile's, the trial's flags, and
        where to listen (the host's port with host networking, the container port with
        bridge)."""
        args = [*self._profile.server.to_args(), *flags]
        if self._cfg.network == "host":
            return [*args, "--host", self._cfg.host, "--port", str(port)]
        return [*args, "--host", "0.0.0.0", "--port", str(self._cfg.container_port)]

    def start(
        self, flags: Sequence[str], workdir: Path, env: Mapping[str, str] | None = None
    ) -> Endpoint:
        """Run one labelled container with the server's arguments and the trial's flags:
        environment from the profile, the trial and ``pass_env`` (names only on disk), GPUs,
        volumes, host or bridge network; its log streamed to the trial folder. A name or port in
        use is the machine's fault."""
        port = self._begin(workdir, self._cfg.host, self._cfg.port)
        args = self.server_args(flags, port)
        env = {**self._cfg.env, **(env or {})}
        env.update({k: os.environ[k] for k in self._cfg.pass_env if k in os.environ})
        labels = {
            LABEL: "true",
            STUDY_LABEL: workdir.parent.parent.name,
            TRIAL_LABEL: workdir.name,
        }
        record = {"image": self._cfg.image, "entrypoint": self._cfg.entrypoint, "command": args}
        self._write_command(workdir, {**record, "env": sorted(env), "labels": labels})
        kwargs: dict[str, Any] = {
            "command": args,
            "entrypoint": self._cfg.entrypoint,
            "environment": env,
            "volumes": _volumes(self._cfg.volumes),
            "shm_size": self._cfg.shm_size,
            "device_requests": _gpu_requests(self._cfg.gpus),
            "labels": labels,
            "tmpfs": {p: "" for p in self._cfg.tmpfs},
            "user": self._cfg.user,
            "detach": True,
        }
        if self._cfg.network == "host":
            kwargs["network_mode"] = "host"
        else:
            kwargs["ports"] = {f"{self._cfg.container_port}/tcp": (self._cfg.host, port)}
        try:
            with deferred_interrupts():  # a Ctrl-C mid-create must not orphan the container
                self._container = self.client.containers.run(self._cfg.image, **kwargs)
        except docker.errors.ImageNotFound as exc:
            raise ConfigError(
                f"docker image {self._cfg.image!r} not found: build or pull it first",
                key="deployer.image",
            ) from exc
        except docker.errors.APIError as exc:
            if exc.status_code == 409 or "Conflict" in str(exc):  # a name or port in use
                raise EnvironmentFault(f"docker could not start the container: {exc}") from exc
            raise DeployError(
                f"docker could not start the container: {exc}", reason="crash"
            ) from exc
        except ENGINE_GONE as exc:  # the engine went away mid-study
            raise engine_gone(exc, self._cfg.docker_host) from exc
        self._log_path = workdir / "server.log"
        self._pump = threading.Thread(
            target=self._stream_logs, args=(self._container,), daemon=True
        )
        self._pump.start()
        self._base_url = f"http://{self._cfg.host}:{port}"
        try:
            self._container.reload()
        except ENGINE_GONE as exc:
            raise engine_gone(exc, self._cfg.docker_host) from exc
        pid = int(self._container.attrs["State"].get("Pid") or 0)
        return Endpoint(
            base_url=self._base_url,
            model=self._profile.server.model_name,
            pids=(pid,) if pid else (),
            container_id=self._container.id,
        )

    def _stream_logs(self, container: Container) -> None:
        """Copy the container's log to the trial folder as it comes (a background thread)."""
        assert self._log_path is not None
        with self._log_path.open("wb") as f, contextlib.suppress(*ENGINE_GONE):
            for chunk in container.logs(stream=True, follow=True):
                f.write(chunk)
                f.flush()

    def _alive(self) -> None:
        """ServerExited when the container is gone or has exited, classified from its exit status
        (OOMKilled included) and log."""
        if self._container is None:
            raise ServerExited("server was not started", reason="crash")
        try:
            self._container.reload()
        except docker.errors.NotFound as exc:
            raise ServerExited("the container disappeared", reason="crash") from exc
        except ENGINE_GONE as exc:  # the machine's fault: not counted, retried on resume
            raise engine_gone(exc, self._cfg.docker_host) from exc
        state = self._container.attrs["State"]
        if state.get("Status") in ("exited", "dead") and self._pump is not None:
            self._pump.join(timeout=5)  # the rest of the log, for the classification
        exited = container_exited(state, self._read_log(), "container")
        if exited is None:
            return
        if not state.get("OOMKilled") and state.get("ExitCode") in (137, 143):
            self._engine_still_up()  # an engine shutting down kills its containers
        raise exited

    def _engine_still_up(self, within_s: float = 8.0) -> None:
        """EnvironmentFault when the engine stops answering within ``within_s``: a container
        killed (137) or terminated (143) by its engine's shutdown is the machine's fault, not
        the configuration's (on a second engine stopped mid-trial, the container read
        "exited 137" a moment before the engine went away)."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            try:
                self.client.ping()
            except ENGINE_GONE as exc:
                raise engine_gone(exc, self._cfg.docker_host) from exc
            time.sleep(0.5)

    def wait_ready(self) -> float:
        """Seconds until /health answers, the log's tail attached to any failure."""
        return self._wait_with_log(self._base_url, self._cfg.health_timeout_s, self._alive)

    def stop(self) -> None:
        """Stop and remove the container (whatever its state) and wait for its log to be written
        out."""
        container, self._container = self._container, None
        if container is not None:
            with contextlib.suppress(*ENGINE_GONE):
                container.stop(timeout=int(self._cfg.stop_timeout_s))
            # An engine that is gone cannot remove it: the next run's clean-up does (labels).
            with contextlib.suppress(*ENGINE_GONE):
                container.remove(force=True)
        if self._pump is not None:
            self._pump.join(timeout=5)
            self._pump = None
