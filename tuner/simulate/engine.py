"""The simulated engine: what a vLLM server would do with a prompt, in modelled time.

An :class:`Engine` turns a prompt into a :class:`Generation`: the tokens, each produced at its
modelled time, and how many prompt tokens the prefix cache already held. It keeps the counters
vLLM exposes on ``/metrics`` under vLLM's own names. Time is modelled, not measured: the server
waits through an injected :class:`Clock`, so tests can use a :class:`VirtualClock` and assert on
counted work instead of wall time.

Two engines ship: :class:`ModelEngine` (a continuous-batching scheduler obeying the flags it was
started with, ``tuner.simulate.scheduler``, used by the ``fake`` deployer) and
``tuner.simulate.replay.ReplayEngine`` (latency drawn from a recorded surface, one request at a
time, used by the ``replay`` deployer).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from tuner.config.rules import parse_flags
from tuner.simulate.scheduler import (
    BLOCK,
    Scheduler,
    SchedulerConfig,
    SimRequest,
    StepCost,
    block_hashes,
)

__all__ = [
    "BLOCK",
    "Admission",
    "Clock",
    "Engine",
    "EngineCounters",
    "Generation",
    "ModelEngine",
    "PromptTooLong",
    "ServerModel",
    "VirtualClock",
    "WallClock",
]


class Clock(Protocol):
    """How the simulated server waits out modelled time, and what time it is."""

    def sleep(self, seconds: float) -> None:
        """Let ``seconds`` pass."""
        ...

    def now(self) -> float:
        """Seconds on this clock."""
        ...


class WallClock:
    """Really waits: a client measuring TTFT sees the modelled latency."""

    def sleep(self, seconds: float) -> None:
        """Really wait."""
        time.sleep(seconds)

    def now(self) -> float:
        """Monotonic seconds."""
        return time.monotonic()


class VirtualClock:
    """Never waits; adds the modelled time up (``elapsed``), for tests that count work."""

    def __init__(self) -> None:
        self.elapsed = 0.0
        self._lock = threading.Lock()

    def sleep(self, seconds: float) -> None:
        """Advance the clock by ``seconds`` at once."""
        with self._lock:
            self.elapsed += seconds

    def now(self) -> float:
        """The modelled seconds so far."""
        return self.elapsed


class PromptTooLong(ValueError):
    """The prompt and its output exceed ``--max-model-len``: vLLM answers HTTP 400."""


@dataclass(frozen=True, slots=True)
class Admission:
    """The engine's answer for one request."""

    prefill_s: float  # modelled time to the first token
    prompt_tokens: int
    cached_tokens: int  # prompt tokens the prefix cache already held


class Generation(Protocol):
    """One request being served: iterate to receive its tokens, each at its modelled time."""

    prompt_tokens: int
    cached_tokens: int  # known once the first token has come

    def __iter__(self) -> Iterator[None]: ...

    def close(self) -> None:
        """The client went away (or the stream ended): free what the request holds."""
        ...


class Engine(Protocol):
    """What the simulated HTTP server asks of an engine."""

    name: str  # the served model name
    fail_chat: bool  # every chat request answers HTTP 500

    @property
    def requests(self) -> int:
        """How many requests the engine admitted."""
        ...

    def generate(self, prompt: str, max_tokens: int, clock: Clock) -> Generation:
        """Start serving one request (raises :class:`PromptTooLong`)."""
        ...

    def metrics(self) -> str:
        """Prometheus text for ``/metrics``."""
        ...

    def close(self) -> None:
        """Stop the engine's work."""
        ...


class _Timed:
    """A generation served alone: wait the prefill, then a fixed time per token."""

    def __init__(
        self, a: Admission, max_tokens: int, decode_s: float, clock: Clock, scale: float
    ) -> None:
        self.prompt_tokens, self.cached_tokens = a.prompt_tokens, a.cached_tokens
        self._a, self._n, self._decode_s, self._clock = a, max_tokens, decode_s, clock
        self._scale = scale

    def __iter__(self) -> Iterator[None]:
        self._clock.sleep(self._a.prefill_s * self._scale)
        for i in range(self._n):
            if i:
                self._clock.sleep(self._decode_s * self._scale)
            yield None

    def close(self) -> None:
        """Nothing to release."""


class EngineCounters:
    """The counters a simulated engine exposes on ``/metrics``, under vLLM's names."""

    decode_s = 0.0
    fail_chat = False
    time_scale = 1.0  # how much of the modelled time is waited out (0: none; still counted)

    def __init__(self, name: str) -> None:
        """Zeroed counters for the engine of model ``name``."""
        self.name = name
        self.queries = 0.0
        self.hits = 0.0
        self.ttft_sum = 0.0
        self.ttft_count = 0
        self._requests = 0
        self.lock = threading.Lock()

    @property
    def requests(self) -> int:
        """How many requests were admitted."""
        return self._requests

    def admit(self, prompt: str) -> Admission:
        """Account for one request served alone (engines without a scheduler define it)."""
        raise NotImplementedError

    def generate(self, prompt: str, max_tokens: int, clock: Clock) -> Generation:
        """A generation timed from the admission: its TTFT, then one token per ``decode_s``."""
        return _Timed(self.admit(prompt), max_tokens, self.decode_s, clock, self.time_scale)

    def close(self) -> None:
        """Nothing to stop: the timings need no thread."""

    def extra_metrics(self, labels: str) -> str:
        """More Prometheus text (scheduler gauges and counters); none by default."""
        return ""

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
        """The counters in Prometheus text format, as vLLM's /metrics names them (prefix cache,
        TTFT histogram, requests), plus the engine's own extra metrics."""
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
        text += self.extra_metrics(labels)
        cache = self.cache_config_labels()
        if cache:
            text += (
                "# TYPE vllm:cache_config_info gauge\n"
                f"vllm:cache_config_info{{{cache},{labels}}} 1.0\n"
            )
        return text


@dataclass(frozen=True, slots=True)
class ServerModel:
    """How long an engine step takes (milliseconds) and how large the KV pool is.

    A step that prefills costs ``base_ms`` plus ``per_token_ms`` per prompt token; every step
    costs ``decode_ms`` plus ``per_seq_ms`` per request decoding in it. ``kv_tokens`` is the KV
    pool at ``gpu_memory_utilization`` 1.0, in tokens.
    """

    base_ms: float = 4.0
    per_token_ms: float = 0.02
    decode_ms: float = 0.3
    per_seq_ms: float = 0.01
    kv_tokens: int = 1_000_000

    def cost(self) -> StepCost:
        """The step cost model for the scheduler."""
        return StepCost(self.base_ms, self.per_token_ms, self.decode_ms, self.per_seq_ms)


class _Queued:
    """A generation fed by the scheduler thread, one queue item per token."""

    def __init__(self, engine: ModelEngine, req: SimRequest) -> None:
        self.prompt_tokens = req.prompt_tokens
        self.cached_tokens = 0
        self.req = req
        self.tokens: queue.SimpleQueue[bool] = queue.SimpleQueue()  # True: the last one
        self._engine = engine

    def __iter__(self) -> Iterator[None]:
        """Yield once per token as the scheduler produces it; stop at the last or on an error."""
        while True:
            last = self.tokens.get()
            self.cached_tokens = self.req.cached_tokens
            if self.req.error is not None:
                return
            yield None
            if last:
                return

    def close(self) -> None:
        """Abort the request (a client that went away)."""
        self._engine.abort(self.req)


class ModelEngine(EngineCounters):
    """A continuous-batching engine obeying the flags the server was started with.

    Requests go through a :class:`~tuner.simulate.scheduler.Scheduler` run by one thread that
    waits each step out on the server's clock: concurrent requests share steps, queue for batch
    slots (``--max-num-seqs``) and the token budget (``--max-num-batched-tokens``), hit the
    prefix cache (on by default, as in vLLM V1) and are preempted when the KV pool is full.

    Example:
        >>> e = ModelEngine(["--enable-prefix-caching"])
        >>> a = e.generate("w " * 64, 1, VirtualClock()); _ = list(a)
        >>> b = e.generate("w " * 64, 1, VirtualClock()); _ = list(b)
        >>> (a.cached_tokens, b.cached_tokens)
        (0, 48)
    """

    def __init__(
        self,
        flags: Sequence[str] = (),
        model: ServerModel | None = None,
        name: str = "fake-model",
        fail_chat: bool = False,
    ) -> None:
        """An engine whose scheduler reads vLLM's flags (prefix caching, chunked prefill, token
        budget, sequences, memory) and whose step costs come from ``model``."""
        super().__init__(name)
        f = parse_flags(flags)
        # Greedy answers: a function of the prompt, which fp8 KV changes after a few tokens
        # (as it does on a real server); the answer guard's tests read the difference.
        self.answer_drift = 5 if f.get("--kv-cache-dtype", "auto") not in ("auto", None) else None
        self.model = model or ServerModel()
        self.cfg = SchedulerConfig.from_flags(f, self.model.kv_tokens)
        cost = self.model.cost()
        self.scheduler = Scheduler(self.cfg, cost)
        self.max_model_len = int(f.get("--max-model-len") or 0)
        self.kv_bytes = int(self.cfg.gpu_memory_utilization * 1000) << 20
        self.decode_s = cost.seconds(0, 1)
        self.fail_chat = fail_chat
        self._cv = threading.Condition(self.lock)
        self._thread: threading.Thread | None = None
        self._closed = False
        self._waiting: dict[int, _Queued] = {}

    def generate(self, prompt: str, max_tokens: int, clock: Clock) -> Generation:
        """Queue a request of ``max_tokens`` for ``prompt`` (one word, one token) and return its
        token stream; PromptTooLong when it cannot fit the context, as vLLM refuses it."""
        words = prompt.split()
        if self.max_model_len and len(words) + max_tokens > self.max_model_len:
            raise PromptTooLong(
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"you requested {len(words) + max_tokens} tokens ({len(words)} in the messages, "
                f"{max_tokens} in the completion)."
            )
        req = SimRequest(block_hashes(words), len(words), max(1, max_tokens))
        gen = _Queued(self, req)
        with self._cv:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, args=(clock,), daemon=True)
                self._thread.start()
            req.arrival = clock.now()
            self._requests += 1
            self._waiting[id(req)] = gen
            self.scheduler.submit(req)
            self._cv.notify()
        return gen

    def abort(self, req: SimRequest) -> None:
        """Drop a request from the scheduler and the waiting list."""
        with self._cv:
            self.scheduler.abort(req)
            self._waiting.pop(id(req), None)

    def _loop(self, clock: Clock) -> None:
        """The engine's thread: run scheduler steps while there is work, each taking its modelled
        duration on ``clock``, and hand out the tokens each step produced."""
        while True:
            with self._cv:
                while not self.scheduler.busy and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                duration, out = self.scheduler.step(clock.now())
            clock.sleep(duration)
            with self._cv:
                sched = self.scheduler  # its counters are the engine's (one place counts)
                self.queries, self.hits = float(sched.queries), float(sched.hits)
                self.ttft_sum, self.ttft_count = sched.ttft_s_sum, sched.ttft_count
                for s in out:
                    gen = self._waiting.get(id(s.request))
                    if gen is None:
                        continue
                    if s.finished:
                        del self._waiting[id(s.request)]
                    gen.tokens.put(s.finished)

    def close(self) -> None:
        """Stop the scheduler thread."""
        with self._cv:
            self._closed = True
            self._cv.notify()

    def extra_metrics(self, labels: str) -> str:
        """The scheduler's gauges and counters as vLLM names them: preemptions, KV-cache use,
        requests running and waiting."""
        s = self.scheduler
        with self.lock:
            return (
                "# TYPE vllm:num_preemptions counter\n"
                f"vllm:num_preemptions_total{{{labels}}} {s.preemptions}\n"
                "# TYPE vllm:kv_cache_usage_perc gauge\n"
                f"vllm:kv_cache_usage_perc{{{labels}}} {s.kv_usage}\n"
                "# TYPE vllm:num_requests_running gauge\n"
                f"vllm:num_requests_running{{{labels}}} {len(s.running)}\n"
                "# TYPE vllm:num_requests_waiting gauge\n"
                f"vllm:num_requests_waiting{{{labels}}} {len(s.waiting)}\n"
                "# TYPE vllm:request_queue_time_seconds histogram\n"
                f'vllm:request_queue_time_seconds_bucket{{{labels},le="+Inf"}} {s.queue_count}\n'
                f"vllm:request_queue_time_seconds_count{{{labels}}} {s.queue_count}\n"
                f"vllm:request_queue_time_seconds_sum{{{labels}}} {s.queue_s_sum}\n"
            )

    def cache_config_labels(self) -> str:
        """vLLM's cache_config_info labels: block size, prefix caching, KV blocks."""
        prefix = "True" if self.cfg.prefix else "False"
        return (
            f'block_size="{BLOCK}",enable_prefix_caching="{prefix}",'
            f'kv_cache_memory_bytes="{self.kv_bytes}"'
        )
