"""vllm-tuner: find the best vLLM serving configuration for a multi-turn agent workload."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
