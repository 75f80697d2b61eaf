"""Search space as data: dimensions, their values, and how each maps to vLLM CLI flags.

``null`` in a dimension means "omit the flag and let vLLM decide". Booleans map to explicit
flags both ways, because vLLM V1 turns prefix caching and chunked prefill on by default:
a config that wants them off must say ``--no-enable-...``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from tuner.config._yaml import StrictModel, load_model, load_yaml
from tuner.errors import ConfigError

__all__ = ["Dimension", "ParamValue", "Params", "SearchSpace", "load_space"]

ParamValue = bool | int | float | str | None
Params = Mapping[str, ParamValue]


class _DimensionModel(StrictModel):
    """One dimension as the space file writes it: its values and how each becomes a flag (or an
    environment variable)."""

    values: list[bool | int | float | str | None] = Field(min_length=1)
    flag: str | None = None
    negative_flag: str | None = None
    # Some vLLM knobs are environment variables (e.g. VLLM_CPU_KVCACHE_SPACE on the CPU
    # backend): such a dimension sets `env` instead of a flag.
    env: str | None = None
    description: str = ""
    label: str | None = None  # short column title in reports (default: the dimension's name)

    @field_validator("flag", "negative_flag")
    @classmethod
    def _dashed(cls, v: str | None) -> str | None:
        """Flags are written as vLLM takes them, starting with ``--``."""
        if v is not None and not v.startswith("--"):
            raise ValueError(f"flags start with '--', got {v!r}")
        return v

    @model_validator(mode="after")
    def _bool_needs_negative(self) -> _DimensionModel:
        """Unique values; exactly one of flag or env; and a boolean flag has the negative form
        vLLM needs to turn a default-on feature off."""
        keys = [json.dumps(v) for v in self.values]
        if len(set(keys)) != len(keys):
            raise ValueError("values must be unique")
        if (self.flag is None) == (self.env is None):
            raise ValueError("a dimension sets exactly one of flag or env")
        if self.env is not None and self.negative_flag is not None:
            raise ValueError("negative_flag only applies to a flag")
        if self.flag and any(isinstance(v, bool) for v in self.values) and not self.negative_flag:
            raise ValueError(
                "a boolean dimension needs negative_flag (vLLM V1 enables some features by default)"
            )
        return self


class _SpaceModel(StrictModel):
    """The space file: a name and its dimensions, in order."""

    name: str
    description: str = ""
    dimensions: dict[str, _DimensionModel] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class Dimension:
    """One tunable vLLM setting."""

    name: str
    values: tuple[ParamValue, ...]
    flag: str | None
    negative_flag: str | None = None
    description: str = ""
    env: str | None = None  # an environment variable instead of a flag
    label: str = ""  # short column title in reports; "" means the name

    @property
    def title(self) -> str:
        """What a report calls this dimension."""
        return self.label or self.name

    def to_flags(self, value: ParamValue) -> list[str]:
        """Flags for ``value``: none for ``None``, the flag or its negation for booleans."""
        if value is None or self.flag is None:
            return []
        if isinstance(value, bool):
            if value:
                return [self.flag]
            assert self.negative_flag is not None
            return [self.negative_flag]
        return [self.flag, str(value)]


@dataclass(frozen=True, slots=True)
class SearchSpace:
    """A finite grid of vLLM settings (the Optuna categorical space)."""

    name: str
    dimensions: tuple[Dimension, ...]
    description: str = ""
    source: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        """The dimensions' names, in the file's order."""
        return tuple(d.name for d in self.dimensions)

    @property
    def labels(self) -> dict[str, str]:
        """Dimension name -> its report title (stored with the study)."""
        return {d.name: d.title for d in self.dimensions}

    @property
    def managed_flags(self) -> frozenset[str]:
        """Every flag the space sets (both forms of a boolean)."""
        out = {d.flag for d in self.dimensions if d.flag}
        out |= {d.negative_flag for d in self.dimensions if d.negative_flag}
        return frozenset(out)

    @property
    def size(self) -> int:
        """Number of points of the grid (valid or not)."""
        n = 1
        for d in self.dimensions:
            n *= len(d.values)
        return n

    def dimension(self, name: str) -> Dimension:
        """The dimension called ``name`` (KeyError otherwise)."""
        for d in self.dimensions:
            if d.name == name:
                return d
        raise KeyError(name)

    def points(self) -> Iterator[dict[str, ParamValue]]:
        """Every point of the grid, in declaration order."""
        for combo in itertools.product(*(d.values for d in self.dimensions)):
            yield dict(zip(self.names, combo, strict=True))

    def to_flags(self, params: Params) -> list[str]:
        """vLLM CLI flags for a point (dimension order, so the same point gives the same flags)."""
        flags: list[str] = []
        for d in self.dimensions:
            flags += d.to_flags(params[d.name])
        return flags

    def to_env(self, params: Params) -> dict[str, str]:
        """Environment variables a point sets (dimensions declared with ``env``)."""
        return {
            d.env: str(params[d.name]).lower()
            if isinstance(params[d.name], bool)
            else str(params[d.name])
            for d in self.dimensions
            if d.env is not None and params.get(d.name) is not None
        }

    def key(self, params: Params) -> str:
        """Canonical identity of a point, used to never deploy the same configuration twice."""
        return json.dumps({d.name: params.get(d.name) for d in self.dimensions}, sort_keys=True)

    def check(self, params: Params, *, where: str = "params") -> None:
        """Raise ConfigError unless ``params`` sets every dimension to one of its values."""
        unknown = set(params) - set(self.names)
        if unknown:
            raise ConfigError(f"unknown dimension(s) {sorted(unknown)}", key=where)
        for d in self.dimensions:
            if d.name not in params:
                raise ConfigError(f"missing value for {d.name}", key=where)
            if not any(_same(params[d.name], v) for v in d.values):
                raise ConfigError(
                    f"{params[d.name]!r} is not one of {list(d.values)}", key=f"{where}.{d.name}"
                )


def _same(a: object, b: object) -> bool:
    """Equal values of the same kind: 1 and True are different values of a dimension."""
    # True == 1 in Python; a space value of 1 must not match a boolean and vice versa.
    return (
        type(a) is type(b)
        and a == b
        or (
            isinstance(a, int | float)
            and isinstance(b, int | float)
            and not isinstance(a, bool)
            and not isinstance(b, bool)
            and a == b
        )
    )


def load_space(path: Path) -> SearchSpace:
    """Load a search space YAML file."""
    tree = load_yaml(path)
    model = load_model(path, _SpaceModel, tree)
    dims = tuple(
        Dimension(
            name=name,
            values=tuple(m.values),
            flag=m.flag,
            negative_flag=m.negative_flag,
            description=m.description,
            env=m.env,
            label=m.label or "",
        )
        for name, m in model.dimensions.items()
    )
    return SearchSpace(
        name=model.name, dimensions=dims, description=model.description, source=str(path)
    )
