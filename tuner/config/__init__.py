"""YAML → validated, immutable objects: space, seeds, deploy profile, objective."""

from __future__ import annotations

from tuner.config.objective import (
    Criteria,
    ObjectiveFile,
    ObjectiveSpec,
    SyntheticAgentSpec,
    TraceSpec,
    WorkloadSpec,
    load_objective,
)
from tuner.config.profile import (
    ComposeConfig,
    DeployerConfig,
    DockerConfig,
    ExternalConfig,
    FakeConfig,
    LocalConfig,
    Profile,
    ReplayConfig,
    ServerArgs,
    load_profile,
)
from tuner.config.rules import parse_flags, violations
from tuner.config.seeds import Seed, load_seeds
from tuner.config.space import Dimension, Params, ParamValue, SearchSpace, load_space

__all__ = [
    "Criteria",
    "DeployerConfig",
    "Dimension",
    "ExternalConfig",
    "ComposeConfig",
    "DockerConfig",
    "FakeConfig",
    "LocalConfig",
    "ObjectiveFile",
    "ObjectiveSpec",
    "ParamValue",
    "Params",
    "Profile",
    "ReplayConfig",
    "SearchSpace",
    "Seed",
    "ServerArgs",
    "SyntheticAgentSpec",
    "TraceSpec",
    "WorkloadSpec",
    "load_objective",
    "load_profile",
    "load_seeds",
    "load_space",
    "parse_flags",
    "violations",
]
