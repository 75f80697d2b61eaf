"""The simulated OpenAI server and engine model: a first-class sibling of a real vLLM.

Used by the ``fake`` deployer (latency modelled from the flags), the ``replay`` deployer
(latency drawn from a recorded surface), unit tests and benchmarks. It sits below ``deploy`` and
``measure`` and imports only ``config``, ``schema`` and the standard library.
"""

from __future__ import annotations

from tuner.simulate.closed_loop import Served, closed_loop
from tuner.simulate.engine import (
    BLOCK,
    Admission,
    Clock,
    Engine,
    EngineCounters,
    Generation,
    ModelEngine,
    PromptTooLong,
    ServerModel,
    VirtualClock,
    WallClock,
)
from tuner.simulate.replay import ReplayEngine
from tuner.simulate.scheduler import Scheduler, SchedulerConfig, StepCost
from tuner.simulate.server import SimulatedServer

__all__ = [
    "BLOCK",
    "Admission",
    "Clock",
    "Engine",
    "EngineCounters",
    "Generation",
    "ModelEngine",
    "PromptTooLong",
    "ReplayEngine",
    "Scheduler",
    "SchedulerConfig",
    "Served",
    "ServerModel",
    "SimulatedServer",
    "StepCost",
    "VirtualClock",
    "WallClock",
    "closed_loop",
]
