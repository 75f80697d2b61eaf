"""Deploy profile: the fixed server arguments and how to run the server (``deployer.kind``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import Field

from tuner.config._yaml import StrictModel, load_model
from tuner.config.rules import parse_flags

__all__ = [
    "DEFAULT_DEPLOYMENT",
    "DEFAULT_PORT",
    "DEPLOYER_CONFIGS",
    "ComposeConfig",
    "DeployerConfig",
    "DockerConfig",
    "ExternalConfig",
    "FakeConfig",
    "LocalConfig",
    "Profile",
    "ReplayConfig",
    "ServerArgs",
    "load_profile",
]


_GIB = 1 << 30
DEFAULT_UTILIZATION = 0.9  # vLLM's gpu_memory_utilization when the flag is left out


class KvBudget(StrictModel):
    """Another machine's KV-cache budget, emulated on a bigger GPU: the trial's
    ``gpu_memory_utilization`` u keeps its meaning on ``cards`` cards of ``card_gib`` each,
    holding ``weights_gib`` of weights (all cards together) and ``overhead_gib`` per card
    (activations, CUDA graphs, the communication buffers): the server is started with
    ``--kv-cache-memory-bytes`` = u x cards x card_gib - weights_gib - cards x overhead_gib
    (GiB), and without ``--gpu-memory-utilization``. With ``kv_bytes_per_token`` (the
    emulated model's, at 16 bits: layers x KV heads x head size x 2 x 2 bytes; fp8 KV holds
    twice the tokens), a utilization whose cache cannot hold one ``max_model_len`` request is
    refused before deploying, as vLLM refuses it at start-up."""

    cards: int = Field(ge=1)
    card_gib: float = Field(gt=0)
    weights_gib: float = Field(ge=0)
    overhead_gib: float = Field(ge=0)
    kv_bytes_per_token: int | None = Field(default=None, gt=0)

    def kv_tokens(self, utilization: float, dtype: str) -> int | None:
        """Tokens the cache holds at ``utilization`` with KV dtype ``dtype`` (None: unknown)."""
        if self.kv_bytes_per_token is None:
            return None
        per_token = self.kv_bytes_per_token // (2 if dtype.startswith("fp8") else 1)
        return max(0, self.kv_bytes(utilization)) // per_token

    def kv_bytes(self, utilization: float) -> int:
        """The KV cache's bytes at ``utilization`` (<= 0: nothing left for it)."""
        gib = (
            utilization * self.cards * self.card_gib
            - self.weights_gib
            - self.cards * self.overhead_gib
        )
        return int(gib * _GIB)


class ServerArgs(StrictModel):
    """Arguments every trial passes to vLLM, whatever the search space proposes."""

    model: str
    served_model_name: str | None = None
    max_model_len: int | None = Field(default=None, gt=0)
    tensor_parallel_size: int = Field(default=1, ge=1)
    extra_args: list[str] = []
    # --enable-prompt-tokens-details: each response's usage says how many prompt tokens the
    # prefix cache held, the per-request cache accounting /metrics cannot give under load
    prompt_tokens_details: bool = True
    # Emulate another machine's KV budget (e.g. two 24 GB cards on one H200): see KvBudget.
    kv_budget: KvBudget | None = None

    @property
    def model_name(self) -> str:
        """The name clients send in requests."""
        return self.served_model_name or self.model

    def to_args(self, *, measuring: bool = True) -> list[str]:
        """The fixed vLLM arguments every trial starts with; ``measuring`` False: what the
        production server needs (without the flags added only for the measurement)."""
        args = ["--model", self.model]
        if self.served_model_name:
            args += ["--served-model-name", self.served_model_name]
        if self.max_model_len is not None:
            args += ["--max-model-len", str(self.max_model_len)]
        if self.tensor_parallel_size != 1:
            args += ["--tensor-parallel-size", str(self.tensor_parallel_size)]
        details = "--enable-prompt-tokens-details"
        if measuring and self.prompt_tokens_details and details not in self.extra_args:
            args.append(details)
        return args + list(self.extra_args)

    def deployed_flags(self, flags: Sequence[str]) -> list[str]:
        """The trial's flags as the server is started with them: with a ``kv_budget``, its
        ``--gpu-memory-utilization`` (vLLM's default 0.9 when absent) becomes the emulated
        machine's ``--kv-cache-memory-bytes``; the stored flags and the lines to paste keep the
        utilization, which is what the emulated machine runs."""
        if self.kv_budget is None:
            return list(flags)
        rest, util = _without_utilization(flags)
        return [*rest, "--kv-cache-memory-bytes", str(self.kv_budget.kv_bytes(util))]

    def kv_budget_problem(self, flags: Sequence[str]) -> str | None:
        """Why the emulated budget leaves no KV cache at the flags' utilization (None: it
        leaves some)."""
        if self.kv_budget is None:
            return None
        util = _without_utilization(flags)[1]
        if self.kv_budget.kv_bytes(util) <= 0:
            return (
                "at this gpu_memory_utilization the emulated cards' memory holds the weights "
                "and overhead but no KV cache (server.kv_budget)"
            )
        # the trial's flags after the profile's fixed ones: vLLM keeps the last
        dtype = parse_flags([*self.extra_args, *flags]).get("--kv-cache-dtype") or "auto"
        tokens = self.kv_budget.kv_tokens(util, dtype)
        if tokens is not None and self.max_model_len and tokens < self.max_model_len:
            return (
                f"at gpu_memory_utilization {util:g} the emulated cards leave a KV cache of "
                f"{tokens} tokens ({dtype} KV), less than one max_model_len "
                f"({self.max_model_len}) request: vLLM refuses to start (server.kv_budget); "
                "fp8 KV, a higher utilization or a shorter max_model_len would fit"
            )
        return None


def _without_utilization(flags: Sequence[str]) -> tuple[list[str], float]:
    """The flags without ``--gpu-memory-utilization``, and its value (vLLM's default 0.9 when
    absent)."""
    out, util, i = [], DEFAULT_UTILIZATION, 0
    while i < len(flags):
        if flags[i] == "--gpu-memory-utilization" and i + 1 < len(flags):
            util, i = float(flags[i + 1]), i + 2
            continue
        out.append(flags[i])
        i += 1
    return out, util


class Cost(StrictModel):
    """The price of the deployment's hardware: ``gpu_hour`` per GPU and hour, times ``gpus``
    (default: the tensor-parallel size)."""

    gpu_hour: float = Field(gt=0)
    gpus: int | None = Field(default=None, ge=1)


class _StartedServerConfig(StrictModel):
    """What every deployer that starts (and so must stop) a real server shares."""

    health_timeout_s: float = Field(default=600.0, gt=0)
    stop_timeout_s: float = Field(default=30.0, gt=0)
    crash_retries: int = Field(default=1, ge=0)


class LocalConfig(_StartedServerConfig):
    """vLLM as a child process of the tuner (its own process group)."""

    kind: Literal["local"] = "local"
    python: str | None = None  # interpreter that has vLLM; default: the tuner's own
    module: str = "vllm.entrypoints.openai.api_server"
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)  # 0: a free port per trial
    env: dict[str, str] = {}
    pass_env: list[str] = []  # names copied from the environment at start; values never stored


class ExternalConfig(StrictModel):
    """An already running server: measured as it is, never restarted."""

    kind: Literal["external"] = "external"
    url: str
    params: dict[str, bool | int | float | str | None] | None = None
    pid: int | None = None  # lets VRAM/RSS be attributed when the server runs on this host
    health_timeout_s: float = Field(default=60.0, gt=0)
    crash_retries: int = 0


class DockerConfig(_StartedServerConfig):
    """vLLM in a container started with the docker SDK, one per trial, removed afterwards."""

    kind: Literal["docker"] = "docker"
    image: str = "vllm/vllm-openai:latest"
    # None: the image's own entrypoint (vllm/vllm-openai starts the OpenAI server); the server
    # arguments are then the container's command.
    entrypoint: list[str] | None = None
    env: dict[str, str] = {}
    pass_env: list[str] = ["HF_TOKEN"]  # copied from the environment at start, never stored
    volumes: dict[str, str] = {}  # host path -> container path[:ro]
    shm_size: str = "2g"  # vLLM needs >= 1 GB of /dev/shm
    gpus: Literal["all", "none"] | list[str] = "all"  # device ids, e.g. ["0", "1"]
    network: Literal["host", "bridge"] = "host"
    host: str = "127.0.0.1"  # where the tuner reaches the server
    port: int = Field(default=0, ge=0, le=65535)  # 0: a free port per trial
    container_port: int = 8000  # bridge network: the port vLLM listens on inside
    tmpfs: list[str] = ["/tmp"]
    user: str | None = None
    docker_host: str | None = None  # e.g. unix:///var/run/docker.sock; default: environment


class ComposeConfig(_StartedServerConfig):
    """The user's own docker compose file: one service's vLLM flags rewritten per trial."""

    kind: Literal["compose"] = "compose"
    file: Path
    service: str
    url: str = "http://127.0.0.1:8000"  # where the service answers (its published port)
    project: str | None = None  # default: vllm-tuner-<file's folder>
    command: list[str] | None = None  # default: `docker compose` v2, else `docker-compose` v1


class ReplayConfig(StrictModel):
    """A recorded surface served as a simulated server (``tuner export-surface`` writes one)."""

    kind: Literal["replay"] = "replay"
    surface: Path
    seed: int = 0  # which recorded samples each request draws
    time_scale: float = Field(default=1.0, ge=0)  # 1: recorded latencies; 0: no waiting at all
    # relative sd of a per-deployment latency factor: deployment-to-deployment variance
    deployment_noise: float = Field(default=0.0, ge=0, lt=1)
    crash_retries: int = 0


class FakeConfig(StrictModel):
    """A simulated server per trial (``tuner.simulate``), latency modelled from the flags."""

    kind: Literal["fake"] = "fake"
    # one engine step: base_ms + per_token_ms per prefill token when it prefills, decode_ms +
    # per_seq_ms per decoding request always (tuner.simulate.scheduler); KV pool at util 1.0
    base_ms: float = 4.0
    per_token_ms: float = 0.02
    decode_ms: float = 0.3
    per_seq_ms: float = 0.01
    kv_tokens: int = Field(default=1_000_000, gt=0)
    startup_s: float = 0.0
    crash_when: list[dict[str, str | None]] = []
    oom_when: list[dict[str, str | None]] = []
    hang_when: list[dict[str, str | None]] = []
    error_when: list[dict[str, str | None]] = []  # chat requests answer HTTP 500
    flaky_crashes: int = Field(default=0, ge=0)  # the first N starts crash, whatever the flags
    # the first N starts meet a broken environment: "port" (another server holds the port)
    # or "disk" (no space left on device) - the machine's fault, not the flags'
    env_faults: int = Field(default=0, ge=0)
    env_fault: Literal["port", "disk"] = "port"
    health_timeout_s: float = Field(default=10.0, gt=0)
    crash_retries: int = Field(default=1, ge=0)


_DeployerUnion = (
    LocalConfig | ExternalConfig | DockerConfig | ComposeConfig | ReplayConfig | FakeConfig
)
DeployerConfig = Annotated[_DeployerUnion, Field(discriminator="kind")]
# kind -> its config model, derived from the union; tuner.deploy.DEPLOYERS must match it.
DEPLOYER_CONFIGS: dict[str, type[StrictModel]] = {
    c.model_fields["kind"].default: c for c in get_args(_DeployerUnion)
}


class Profile(StrictModel):
    """A deploy profile file."""

    name: str
    description: str = ""
    server: ServerArgs
    deployer: DeployerConfig = LocalConfig()
    # What the deployment costs, for the cost_per_mtok objective.
    cost: Cost | None = None
    # The objective file this deployment is tuned for, when --objective is not given (relative
    # to this file): the GPU and compose profiles point at the concurrent agent workload.
    objective: Path | None = None

    @property
    def price_per_hour(self) -> float | None:
        """What an hour of the deployment costs (None: no ``cost``)."""
        if self.cost is None:
            return None
        return self.cost.gpu_hour * (self.cost.gpus or self.server.tensor_parallel_size)


# How the recommendation's `docker run` line runs vLLM when the profile does not say.
DEFAULT_IMAGE = "vllm/vllm-openai:latest"
DEFAULT_PORT = 8000
DEFAULT_DEPLOYMENT: dict[str, Any] = {
    "image": DEFAULT_IMAGE,
    "gpus": "all",
    "port": DEFAULT_PORT,
    "volumes": {"~/.cache/huggingface": "/root/.cache/huggingface"},
    "pass_env": ["HF_TOKEN"],
    "shm_size": None,
}


def load_profile(path: Path) -> Profile:
    """Load a deploy profile YAML file (its ``objective`` resolved against its folder)."""
    prof = load_model(path, Profile)
    if prof.objective is not None and not prof.objective.is_absolute():
        prof = prof.model_copy(update={"objective": (path.parent / prof.objective).resolve()})
    return prof
