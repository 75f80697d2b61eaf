"""Named seed configurations (the mission's 12 strategic configs), enqueued before TPE explores."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from tuner.config._yaml import StrictModel, line_of, load_model, load_yaml
from tuner.config.space import ParamValue, SearchSpace
from tuner.errors import ConfigError

__all__ = ["Seed", "load_seeds"]


class _SeedModel(StrictModel):
    """One seed as the seeds file writes it: a name, a description and its parameters."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    params: dict[str, bool | int | float | str | None]


class _SeedsModel(StrictModel):
    """The seeds file: a list of seeds, run in its order."""

    seeds: list[_SeedModel]


@dataclass(frozen=True, slots=True)
class Seed:
    """A named point of the space."""

    name: str
    params: dict[str, ParamValue]
    description: str = ""


def load_seeds(path: Path, space: SearchSpace) -> tuple[Seed, ...]:
    """Load seeds and check every one against ``space`` (errors name the seed's line)."""
    tree = load_yaml(path)
    model = load_model(path, _SeedsModel, tree)
    seen: set[str] = set()
    out: list[Seed] = []
    for i, s in enumerate(model.seeds):
        if s.name in seen:
            raise ConfigError(
                f"duplicate seed name {s.name!r}",
                file=path,
                line=line_of(tree, ("seeds", i, "name")),
                key=f"seeds.{i}.name",
            )
        seen.add(s.name)
        try:
            # A seed may leave out what the space defaults (null values, absent conditionals).
            params = space.complete(s.params, where=f"seeds.{i}.params")
        except ConfigError as exc:
            raise ConfigError(
                exc.detail, file=path, line=line_of(tree, ("seeds", i, "params")), key=exc.key
            ) from None
        out.append(Seed(name=s.name, params=params, description=s.description))
    return tuple(out)
