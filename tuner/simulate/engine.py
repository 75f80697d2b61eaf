"""The simulated engine: what a vLLM server would do with a prompt, in modelled time.

An :class:`Engine` decides, for each request, how long its prefill takes and how many of its
prompt tokens the prefix cache already held, and keeps the counters vLLM exposes on
``/metrics`` under vLLM's own names. Time is modelled, not measured: the engine records the
TTFT it modelled in its histogram, and the server waits through an injected :class:`Clock`, so
tests can use a :class:`VirtualClock` and assert on counted work instead of wall time.

Two engines ship: :class:`ModelEngine` (latency from the flags it was started with, used by the
``fake`` deployer) and ``tuner.simulate.replay.ReplayEngine`` (latency drawn from a recorded
surface, used by the ``replay`` deployer).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from tuner.config.rules import parse_flags

__all__ = [
    "BLOCK",
    "Admission",
    "Clock",
    "Engine",
    "EngineCounters",
    "ModelEngine",
    "ServerModel",
    "VirtualClock",
    "WallClock",
]

BLOCK = 16  # "tokens" (words) per cache block


class Clock(Protocol):
    """How the simulated server waits out modelled time."""

    def sleep(self, seconds: float) -> None: ...


class WallClock:
    """Really waits: a client measuring TTFT sees the modelled latency."""

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class VirtualClock:
    """Never waits; adds the modelled time up (``elapsed``), for tests that count work."""

    def __init__(self) -> None:
        self.elapsed = 0.0
        self._lock = threading.Lock()

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.elapsed += seconds


@dataclass(frozen=True, slots=True)
class Admission:
    """The engine's answer for one request."""

    prefill_s: float  # modelled time to the first token
    prompt_tokens: int
    cached_tokens: int  # prompt tokens the prefix cache already held


class Engine(Protocol):
    """What the simulated HTTP server asks of an engine."""

    name: str  # the served model name
    decode_s: float  # modelled seconds per output token after the first
    fail_chat: bool  # every chat request answers HTTP 500

    @property
    def requests(self) -> int: ...

    def admit(self, prompt: str) -> Admission:
        """Account for one request: cache lookup, counters, modelled TTFT (recorded)."""
        ...

    def metrics(self) -> str:
        """Prometheus text for ``/metrics``."""
        ...


class EngineCounters:
    """The counters a simulated engine exposes on ``/metrics``, under vLLM's names."""

    decode_s = 0.0
    fail_chat = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.queries = 0.0
        self.hits = 0.0
        self.ttft_sum = 0.0
        self.ttft_count = 0
        self._requests = 0
        self.lock = threading.Lock()

    @property
    def requests(self) -> int:
        return self._requests

    def _count(self, prompt_tokens: int, cached: float, ttft_s: float) -> None:
        """Counters for one admitted request (the caller holds ``lock``)."""
        self._requests += 1
        self.queries += prompt_tokens
        self.hits += cached
        self.ttft_sum += ttft_s
        self.ttft_count += 1

    def cache_config_labels(self) -> str:
        """Labels of vllm:cache_config_info ('' for none)."""
        return ""

    def metrics(self) -> str:
        labels = f'engine="0",model_name="{self.name}"'
        text = (
            "# TYPE vllm:prefix_cache_queries counter\n"
            f"vllm:prefix_cache_queries_total{{{labels}}} {self.queries}\n"
            "# TYPE vllm:prefix_cache_hits counter\n"
            f"vllm:prefix_cache_hits_total{{{labels}}} {self.hits}\n"
            "# TYPE vllm:time_to_first_token_seconds histogram\n"
            f'vllm:time_to_first_token_seconds_bucket{{{labels},le="+Inf"}} {self.ttft_count}\n'
            f"vllm:time_to_first_token_seconds_count{{{labels}}} {self.ttft_count}\n"
            f"vllm:time_to_first_token_seconds_sum{{{labels}}} {self.ttft_sum}\n"
        )
        cache = self.cache_config_labels()
        if cache:
            text += (
                "# TYPE vllm:cache_config_info gauge\n"
                f"vllm:cache_config_info{{{cache},{labels}}} 1.0\n"
            )
        return text


@dataclass(frozen=True, slots=True)
class ServerModel:
    """How the modelled latency depends on the flags (milliseconds)."""

    base_ms: float = 4.0
    per_token_ms: float = 0.02
    chunked_overhead: float = 1.3
    decode_ms: float = 0.3


class ModelEngine(EngineCounters):
    """Latency from the flags the server was started with, the way vLLM's behaves.

    With prefix caching on (vLLM V1's default), only the prompt's uncached blocks cost prefill
    time; chunked prefill (also on by default) costs a little, more with a small token budget.

    Example:
        >>> e = ModelEngine(["--enable-prefix-caching"])
        >>> a, b = e.admit("w " * 64), e.admit("w " * 64)
        >>> (a.cached_tokens, b.cached_tokens)
        (0, 64)
    """

    def __init__(
        self,
        flags: Sequence[str] = (),
        model: ServerModel | None = None,
        name: str = "fake-model",
        fail_chat: bool = False,
    ) -> None:
        super().__init__(name)
        f = parse_flags(flags)
        self.prefix = "--no-enable-prefix-caching" not in f
        self.chunked = "--no-enable-chunked-prefill" not in f
        util = float(f.get("--gpu-memory-utilization") or 0.9)
        self.kv_bytes = int(util * 1000) * 1024 * 1024
        budget = f.get("--max-num-batched-tokens")
        self.budget = int(budget) if budget else None
        self.model = model or ServerModel()
        self.decode_s = self.model.decode_ms / 1000.0
        self.fail_chat = fail_chat
        self.blocks: set[str] = set()

    @staticmethod
    def _hashes(words: list[str]) -> list[str]:
        out, h = [], hashlib.sha256()
        for i in range(len(words) // BLOCK):
            h.update(" ".join(words[i * BLOCK : (i + 1) * BLOCK]).encode())
            out.append(h.hexdigest())
        return out

    def prefill_ms(self, uncached_tokens: int) -> float:
        """Modelled prefill time of ``uncached_tokens`` under this engine's flags."""
        m = self.model
        ms = m.base_ms + m.per_token_ms * uncached_tokens
        if self.chunked:
            # Chunked prefill splits long prompts: a small budget means more scheduler steps.
            small = (self.budget or 8192) < 4096
            ms *= m.chunked_overhead if small else 1.0 + (m.chunked_overhead - 1) / 3
        return ms

    def admit(self, prompt: str) -> Admission:
        words = prompt.split()
        hashes = self._hashes(words)
        with self.lock:
            cached = 0
            if self.prefix:
                for h in hashes:
                    if h not in self.blocks:
                        break
                    cached += BLOCK
                self.blocks.update(hashes)
            seconds = self.prefill_ms(len(words) - cached) / 1000.0
            self._count(len(words), cached, seconds)
        return Admission(seconds, len(words), cached)

    def cache_config_labels(self) -> str:
        prefix = "True" if self.prefix else "False"
        return (
            f'block_size="{BLOCK}",enable_prefix_caching="{prefix}",'
            f'kv_cache_memory_bytes="{self.kv_bytes}"'
        )
