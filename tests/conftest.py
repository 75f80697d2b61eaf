"""Shared fixtures: small files, fast workloads, fake profiles."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tuner.config import (
    FakeConfig,
    ObjectiveFile,
    Profile,
    ServerArgs,
    WorkloadSpec,
    load_objective,
    load_seeds,
    load_space,
)
from tuner.config.seeds import Seed
from tuner.config.space import SearchSpace
from tuner.testing import FakeDeployer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def space() -> SearchSpace:
    return load_space(ROOT / "search_spaces" / "seed_192.yaml")


@pytest.fixture
def seeds(space: SearchSpace) -> tuple[Seed, ...]:
    return load_seeds(ROOT / "configs" / "strategic_12.yaml", space)


FAST_WORKLOAD = WorkloadSpec(
    system_prompt_words=120,
    tools=2,
    turns=3,
    conversations=3,
    warmup_conversations=1,
    user_words=8,
    max_tokens=3,
    request_timeout_s=10,
)


@pytest.fixture
def objective() -> ObjectiveFile:
    obj = load_objective(ROOT / "objectives" / "agent_multiturn.yaml")
    return obj.model_copy(update={"workload": FAST_WORKLOAD})


def fake_profile(**deployer: object) -> Profile:
    return Profile(
        name="fake",
        server=ServerArgs(model="fake-model", max_model_len=4096),
        deployer=FakeConfig(**deployer),  # type: ignore[arg-type]
    )


@pytest.fixture(autouse=True)
def _reset_fake_counter() -> Iterator[None]:
    FakeDeployer.starts = 0
    yield
    FakeDeployer.starts = 0
