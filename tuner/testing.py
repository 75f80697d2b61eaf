"""Test helpers for vllm-tuner's tests and for users' own: small fakes built from the library.

Nothing in the library imports this module; it imports the library. The simulated server and
engine themselves live in ``tuner.simulate``, the ``fake`` deployer in ``tuner.deploy.fake``.

Example:
    >>> with fake_server(["--enable-prefix-caching"]) as srv:  # doctest: +SKIP
    ...     measure(Endpoint(srv.base_url, "fake-model"), workload)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tuner.config.objective import WorkloadSpec
from tuner.config.profile import FakeConfig, Profile, ServerArgs
from tuner.deploy.fake import fake_starts
from tuner.simulate import Clock, ModelEngine, ServerModel, SimulatedServer

__all__ = ["FAST_WORKLOAD", "fake_profile", "fake_server", "study_starts"]

# A workload that measures in a fraction of a second against a simulated server.
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


def fake_server(
    flags: Sequence[str] = (),
    *,
    name: str = "fake-model",
    model: ServerModel | None = None,
    fail_chat: bool = False,
    clock: Clock | None = None,
) -> SimulatedServer:
    """A running simulated server whose engine models latency from ``flags``."""
    engine = ModelEngine(flags, model, name=name, fail_chat=fail_chat)
    return SimulatedServer(engine, clock=clock)


def fake_profile(**deployer: object) -> Profile:
    """A ``fake`` deploy profile serving ``fake-model``; keyword arguments go to FakeConfig."""
    return Profile(
        name="fake",
        server=ServerArgs(model="fake-model", max_model_len=4096),
        deployer=FakeConfig.model_validate(deployer),
    )


def study_starts(study_root: Path) -> int:
    """How many servers the ``fake`` deployer started for the study in ``study_root``."""
    return fake_starts(study_root / "trials")
