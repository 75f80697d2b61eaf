"""Search space as data: dimensions, their values, and how each maps to vLLM CLI flags.

``null`` in a dimension means "omit the flag and let vLLM decide". Booleans map to explicit
flags both ways, because vLLM V1 turns prefix caching and chunked prefill on by default:
a config that wants them off must say ``--no-enable-...``.

A dimension can be **conditional** (``when: {speculative_method: [ngram]}``): it exists only
while another dimension has one of those values, and is ``null`` otherwise. A point always
names every dimension; :meth:`SearchSpace.normalize` sets an absent one to ``null`` and an
active one left ``null`` to its first value, so that one configuration has one key. Where vLLM
takes one JSON flag (``--speculative-config``), a dimension with ``json_key`` writes its value
into that object and dimensions declared ``into`` it add theirs.
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
    # Exists only while each named (earlier) dimension has one of the listed values.
    when: dict[str, list[bool | int | float | str | None]] | None = None
    # The flag's argument is a JSON object: {json_key: value, ...}; a dimension with `into`
    # writes its own json_key into another dimension's object instead of a flag of its own.
    json_key: str | None = None
    into: str | None = None

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
        if [self.flag, self.env, self.into].count(None) != 2:
            raise ValueError("a dimension sets exactly one of flag, env or into")
        if self.into is not None and self.json_key is None:
            raise ValueError("a dimension written into another's JSON flag needs json_key")
        if self.json_key is not None and self.env is not None:
            raise ValueError("json_key applies to a flag")
        if (
            self.json_key is not None
            and self.into is None
            and any(isinstance(v, bool) for v in self.values)
        ):
            raise ValueError("a JSON flag's own value cannot be a boolean")
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

    @model_validator(mode="after")
    def _conditions(self) -> _SpaceModel:
        """``when`` names earlier dimensions and their values; ``into`` a JSON-flag dimension
        that is active whenever the one written into it is."""
        names = list(self.dimensions)
        for i, (name, d) in enumerate(self.dimensions.items()):
            for other, wanted in (d.when or {}).items():
                if other not in names[:i]:
                    raise ValueError(
                        f"{name}: `when` names {other!r}, which is not a dimension declared "
                        "before it"
                    )
                vals = self.dimensions[other].values
                for w in wanted:
                    if not any(_same(w, v) for v in vals):
                        raise ValueError(f"{name}: `when` {other}={w!r} is not one of {vals}")
            if d.into is not None:
                target = self.dimensions.get(d.into)
                if target is None or target.flag is None or target.json_key is None:
                    raise ValueError(
                        f"{name}: `into` needs a dimension with a flag and json_key, got {d.into!r}"
                    )
                if not d.when or d.into not in d.when or None in d.when[d.into]:
                    raise ValueError(
                        f"{name}: a dimension written into {d.into!r} needs `when` on it "
                        "(the JSON flag exists only when it is set)"
                    )
        return self


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
    when: tuple[tuple[str, tuple[ParamValue, ...]], ...] = ()  # exists only while these hold
    json_key: str | None = None  # the flag's argument is a JSON object with this key
    into: str | None = None  # writes json_key into that dimension's JSON flag instead

    @property
    def takes_null(self) -> bool:
        """Whether ``null`` (the flag left to vLLM) is one of its values."""
        return any(v is None for v in self.values)

    @property
    def choices(self) -> tuple[ParamValue, ...]:
        """What a point may hold here: the values, and ``None`` for "absent" when conditional
        (the Optuna distribution)."""
        if self.when and not self.takes_null:
            return (None, *self.values)
        return self.values

    def active(self, params: Params) -> bool:
        """Whether the dimension exists at ``params`` (always, unless conditional)."""
        return all(any(_same(params.get(k), v) for v in vs) for k, vs in self.when)

    @property
    def title(self) -> str:
        """What a report calls this dimension."""
        return self.label or self.name

    def to_flags(self, value: ParamValue, parts: Params | None = None) -> list[str]:
        """Flags for ``value``: none for ``None``, the flag or its negation for booleans; a
        JSON flag's object holds ``value`` under ``json_key`` and the ``parts`` written into
        it by other dimensions."""
        if value is None or self.flag is None:
            return []
        if self.json_key is not None:
            obj = {self.json_key: value, **(parts or {})}
            return [self.flag, json.dumps(obj, separators=(",", ":"))]
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
        """Number of distinct configurations (valid or not; a conditional dimension counts
        only where it exists)."""
        return sum(1 for _ in self.points())

    @property
    def conditional(self) -> bool:
        """Whether some dimension exists only under a condition."""
        return any(d.when for d in self.dimensions)

    def dimension(self, name: str) -> Dimension:
        """The dimension called ``name`` (KeyError otherwise)."""
        for d in self.dimensions:
            if d.name == name:
                return d
        raise KeyError(name)

    def points(self) -> Iterator[dict[str, ParamValue]]:
        """Every distinct configuration, in declaration order (a conditional dimension only
        where it exists)."""
        if not self.conditional:
            for combo in itertools.product(*(d.values for d in self.dimensions)):
                yield dict(zip(self.names, combo, strict=True))
            return
        seen: set[str] = set()
        for combo in itertools.product(*(d.values for d in self.dimensions)):
            point = self.normalize(dict(zip(self.names, combo, strict=True)))
            key = self.key(point)
            if key not in seen:
                seen.add(key)
                yield point

    def normalize(self, params: Params) -> dict[str, ParamValue]:
        """``params`` as one configuration: every dimension named, an absent conditional one
        ``None``, an active one left ``None`` (and not allowed to be) its first value."""
        out: dict[str, ParamValue] = {}
        for d in self.dimensions:
            value = params.get(d.name)
            if not d.active(out):
                value = None
            elif value is None and d.when and not d.takes_null:
                value = d.values[0]
            out[d.name] = value
        return out

    def consistent(self, params: Params) -> str | None:
        """Why ``params`` sets a dimension that does not exist there (or leaves one unset that
        does); None when it is one configuration as it stands."""
        norm = self.normalize(params)
        for d in self.dimensions:
            if d.when and not _same(params.get(d.name), norm[d.name]):
                cond = " and ".join(f"{k} in {list(vs)}" for k, vs in d.when)
                if norm[d.name] is None:
                    return f"{d.name} is set to {params.get(d.name)!r} but exists only when {cond}"
                return f"{d.name} must be set when {cond}"
        return None

    def to_flags(self, params: Params) -> list[str]:
        """vLLM CLI flags for a point (dimension order, so the same point gives the same flags).
        A JSON flag gathers the values of the dimensions written into it."""
        params = self.normalize(params) if self.conditional else params
        flags: list[str] = []
        for d in self.dimensions:
            if d.into is None:  # a dimension written into a JSON flag has no flag of its own
                parts = {
                    str(p.json_key): params[p.name]
                    for p in self.dimensions
                    if p.into == d.name and params[p.name] is not None
                }
                flags += d.to_flags(params[d.name], parts)
        return flags

    def to_env(self, params: Params) -> dict[str, str]:
        """Environment variables a point sets (dimensions declared with ``env``)."""
        params = self.normalize(params) if self.conditional else params
        return {
            d.env: str(params[d.name]).lower()
            if isinstance(params[d.name], bool)
            else str(params[d.name])
            for d in self.dimensions
            if d.env is not None and params.get(d.name) is not None
        }

    def key(self, params: Params) -> str:
        """Canonical identity of a point, used to never deploy the same configuration twice
        (a conditional dimension where it does not exist is left out of it)."""
        if self.conditional:
            params = self.normalize(params)
        return json.dumps({d.name: params.get(d.name) for d in self.dimensions}, sort_keys=True)

    def complete(self, params: Params, *, where: str = "params") -> dict[str, ParamValue]:
        """``params`` with the dimensions it may leave out filled in (a conditional one that
        does not exist there; one whose values include ``null``, vLLM's default): ConfigError
        unless every dimension then holds one of its values and the point is consistent."""
        unknown = set(params) - set(self.names)
        if unknown:
            raise ConfigError(f"unknown dimension(s) {sorted(unknown)}", key=where)
        out: dict[str, ParamValue] = {}
        for d in self.dimensions:
            if d.name not in params:
                if d.active(out) and not d.takes_null:
                    raise ConfigError(f"missing value for {d.name}", key=where)
                out[d.name] = None
                continue
            value = params[d.name]
            if not any(_same(value, v) for v in d.choices):
                raise ConfigError(
                    f"{value!r} is not one of {list(d.values)}", key=f"{where}.{d.name}"
                )
            out[d.name] = value
        problem = self.consistent(out)
        if problem is not None:
            raise ConfigError(problem, key=where)
        return out

    def check(self, params: Params, *, where: str = "params") -> None:
        """Raise ConfigError unless ``params`` (completed) sets every dimension to one of its
        values, consistently with the conditions."""
        self.complete(params, where=where)


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
            when=tuple((k, tuple(vs)) for k, vs in (m.when or {}).items()),
            json_key=m.json_key,
            into=m.into,
        )
        for name, m in model.dimensions.items()
    )
    return SearchSpace(
        name=model.name, dimensions=dims, description=model.description, source=str(path)
    )
