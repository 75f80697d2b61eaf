"""What a study stores on disk, defined once: the trial folder, ``measurements.json``, surfaces.

Every writer and reader goes through these definitions: the runner writes a trial's files,
``tuner report`` and ``tuner export-surface`` read them back, the replay deployer serves a
surface, ``benchmarks/gpu/summarize.py`` prints a committed study. A trial folder is::

    studies/NAME/trials/NNNN/
        command.json        how the server was started (argv, names of env variables)
        server.log          the server's output (server.attemptK.log for crash retries)
        measurements.json   MeasurementsDoc: summary, cache config, every request's sample
        failure.json        reason, error and log tail of a failed trial

``measurements.json`` carries ``schema_version``; files written before it existed are version 1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from tuner.errors import ConfigError, StudyError

__all__ = [
    "SCHEMA_VERSION",
    "MeasurementsDoc",
    "RequestRecord",
    "Surface",
    "SurfacePoint",
    "TrialFolder",
    "VALIDATION_SUFFIX",
    "load_surface",
    "point_key",
    "series_of",
    "validation_name",
    "write_json",
]

SCHEMA_VERSION = 2  # 2: cached_tokens, itl_ms, started_s per request (1 reads as 2)

RequestKind = Literal["warmup", "miss", "hit"]


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically: never a half-written file after a kill."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One measured request, as measurement produces it and ``measurements.json`` stores it."""

    conversation: int  # -1, -2, ... for warm-up conversations
    turn: int
    kind: RequestKind
    ttft_ms: float
    total_ms: float
    prompt_tokens: int
    completion_tokens: int
    decode_tok_s: float
    prefix_queries: float  # /metrics delta over this request
    prefix_hits: float
    server_ttft_ms: float | None
    # usage.prompt_tokens_details.cached_tokens: what the prefix cache held for this request
    cached_tokens: int | None = None
    itl_ms: tuple[float, ...] = ()  # inter-token latency per chunk (ms per token)
    started_s: float = 0.0  # when the request was sent, from the start of the measurement
    # request class: cold (prefix never seen), first_turn (new conversation, shared system
    # prompt), continuation (later turns); "" in files written before classes existed
    klass: str = ""
    # on a timetable (workload.timing), how late the request went out after its scheduled
    # time (a turn waits for the one before it); None in closed loop
    late_ms: float | None = None


def series_of(records: list[RequestRecord] | tuple[RequestRecord, ...]) -> dict[str, list[float]]:
    """The sample series the metric table reads (``tuner.metrics``), from request records."""
    measured = [r for r in records if r.kind != "warmup"]
    return {
        "ttft_miss_ms": [r.ttft_ms for r in records if r.kind == "miss"],
        "ttft_hit_ms": [r.ttft_ms for r in records if r.kind == "hit"],
        "itl_ms": [x for r in measured for x in r.itl_ms],
        "e2e_ms": [r.total_ms for r in measured],
    }


class MeasurementsDoc(BaseModel):
    """The content of ``measurements.json`` (a versioned model)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    trial: int
    seed_name: str | None = None
    params: dict[str, Any]
    flags: list[str]
    env: dict[str, str] = {}
    startup_s: float
    summary: dict[str, Any]
    cache_config: dict[str, str] = {}
    samples: list[RequestRecord]

    def series(self) -> dict[str, list[float]]:
        """Raw sample series by the names of the metric table."""
        return series_of(self.samples)

    def ttft(self, kind: RequestKind) -> list[float]:
        """Client TTFT samples (ms) of one kind of request."""
        return [s.ttft_ms for s in self.samples if s.kind == kind]


@dataclass(frozen=True, slots=True)
class TrialFolder:
    """The files of one trial; ``TrialFolder.of(study_root, number)`` names its folder."""

    path: Path

    @classmethod
    def of(cls, study_root: Path, number: int) -> TrialFolder:
        """The folder of trial ``number`` in the study folder ``study_root``."""
        return cls(study_root / "trials" / f"{number:04d}")

    @property
    def command(self) -> Path:
        """How the server was started (argv, the names of the variables passed)."""
        return self.path / "command.json"

    @property
    def server_log(self) -> Path:
        """The server's output."""
        return self.path / "server.log"

    @property
    def measurements(self) -> Path:
        """What was measured (``MeasurementsDoc``)."""
        return self.path / "measurements.json"

    @property
    def failure(self) -> Path:
        """Why the trial failed, with the log's tail."""
        return self.path / "failure.json"

    def write_measurements(self, doc: MeasurementsDoc) -> None:
        """Write ``doc`` as the trial's measurements.json (atomically)."""
        write_json(self.measurements, doc.model_dump(mode="json"))

    def read_measurements(self) -> MeasurementsDoc:
        """The trial's MeasurementsDoc; StudyError naming the file when it is missing or bad."""
        try:
            raw = json.loads(self.measurements.read_text())
        except (OSError, ValueError) as exc:
            raise StudyError(f"{self.measurements}: cannot read: {exc}") from exc
        version = raw.setdefault("schema_version", 1) if isinstance(raw, dict) else None
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise StudyError(
                f"{self.measurements}: schema_version {version!r}; this tuner reads up to "
                f"{SCHEMA_VERSION}: upgrade vllm-bayes-tuner"
            )
        try:
            return MeasurementsDoc.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise StudyError(f"{self.measurements}: {where}: {first['msg']}") from exc

    def write_failure(self, reason: str, error: str, log_tail: str) -> None:
        """Write the trial's failure.json (atomically)."""
        write_json(self.failure, {"reason": reason, "error": error, "log_tail": log_tail})


VALIDATION_SUFFIX = ".validation"


def validation_name(study_name: str) -> str:
    """The linked study, in the same storage, that holds ``study_name``'s validation trials
    (their folders are ``STUDY/validation/trials/NNNN``)."""
    return study_name + VALIDATION_SUFFIX


def point_key(flags: list[str] | tuple[str, ...], env: dict[str, str] | None = None) -> str:
    """Identity of a deployed configuration: its trial flags and environment."""
    return json.dumps({"flags": list(flags), "env": dict(sorted((env or {}).items()))})


@dataclass(frozen=True, slots=True)
class SurfacePoint:
    """One configuration of a recorded surface: its raw samples, or how it failed."""

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
        """The point's identity: its flags and environment."""
        return point_key(self.flags, self.env)


@dataclass(frozen=True, slots=True)
class Surface:
    """A recorded sweep (``tuner export-surface``), served again by the replay deployer."""

    name: str
    description: str
    space: str
    objectives: list[str]
    points: list[SurfacePoint]

    def by_key(self) -> dict[str, SurfacePoint]:
        """Points by :func:`point_key` (what the replay deployer looks up)."""
        return {p.key: p for p in self.points}

    def to_json(self) -> dict[str, Any]:
        """The surface as JSON-ready data (what :func:`load_surface` reads)."""
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
