"""Run the agent workload against an endpoint and turn it into honest numbers.

Knows nothing of how the server was started: it gets an :class:`~tuner.types.Endpoint`, sends
the workload over httpx streaming and returns a :class:`TrialMeasurement` whose
:meth:`~TrialMeasurement.observations` feed the metric table (``tuner.metrics``).

One conversation at a time (``concurrency: 1``), ``/metrics`` is read around every request, so
each request has its own prefix-cache delta and server-side TTFT. With ``concurrency: C``, C
conversations are in flight (a closed loop: a new one starts as one ends, starts staggered so
the first turns do not arrive as one burst), or they follow a fixed timetable
(``tuner.measure.timetable``: the same arrivals on every deployment); per-request ``/metrics``
deltas mean nothing then, and each request's cache accounting comes from its own usage
(``prompt_tokens_details.cached_tokens``), with the trial-level ``/metrics`` delta kept as
the cross-check.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from tuner.config.workload import SyntheticAgentSpec, TraceSpec
from tuner.errors import MeasureError
from tuner.measure._result import Kind, RequestSample, TrialMeasurement
from tuner.measure.client import ChatTiming, stream_chat
from tuner.measure.metrics import MetricsSnapshot, fetch_metrics
from tuner.measure.timetable import Timetable
from tuner.measure.vram import MemoryReading, read_memory
from tuner.measure.workload import Workload, make_workload, vocabulary_sample
from tuner.types import Endpoint, tls_context

__all__ = ["RequestSample", "TrialMeasurement", "measure", "measure_async"]


@dataclass
class _Run:
    """The state one measurement shares between its conversations."""

    endpoint: Endpoint
    spec: SyntheticAgentSpec | TraceSpec
    client: httpx.AsyncClient
    workload: Workload
    started: float
    last: MetricsSnapshot
    on_request: Callable[[RequestSample], None] | None
    samples: list[RequestSample] = field(default_factory=list)
    prefixes: set[str] = field(default_factory=set)  # conversation openings sent so far
    errors: int = 0
    requests: int = 0
    kv_peak: float | None = None  # highest vllm:kv_cache_usage_perc seen while measuring

    def saw(self, snap: MetricsSnapshot) -> None:
        """Keep the highest KV-cache use seen so far."""
        if snap.kv_usage is not None:
            self.kv_peak = max(self.kv_peak or 0.0, snap.kv_usage)


async def _conversation(
    run: _Run,
    conv: int,
    *,
    warmup: bool,
    per_request: bool,
    schedule: tuple[Timetable, float] | None = None,
) -> None:
    """One conversation's turns in order; its history grows with each answer (the model's, or
    the recorded one of a trace). ``schedule``: the timetable and the time its clock started;
    each turn then waits for its time, and its lateness past it is recorded."""
    spec = run.spec
    c = run.workload.conversation(conv)
    # cold: nobody sent this opening before in this run; first_turn: another conversation did
    first_class = "first_turn" if c.prefix_key in run.prefixes else "cold"
    run.prefixes.add(c.prefix_key)
    messages = list(c.opening)
    for turn, t in enumerate(c.turns):
        late_ms = None
        if schedule is not None:
            plan, t0 = schedule
            due = t0 + plan.send_at(conv, turn)
            if (wait := due - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            late_ms = max(0.0, time.perf_counter() - due) * 1000.0
        elif turn and spec.think_time_s:
            await asyncio.sleep(spec.think_time_s)
        messages.extend(t.before)
        sent = time.perf_counter() - run.started
        run.requests += 1
        try:
            timing = await stream_chat(
                run.client,
                run.endpoint.base_url,
                run.endpoint.model,
                messages,
                max_tokens=t.max_tokens,
                temperature=spec.temperature,
                ignore_eos=spec.ignore_eos,
                timeout_s=spec.request_timeout_s,
                stall_timeout_s=spec.stall_timeout_s,
                tools=c.tools,
            )
        except MeasureError as exc:
            if exc.reason == "hang" or spec.max_error_share == 0:
                raise
            run.errors += 1  # counted; too many make the trial `overload`
            return
        klass = first_class if turn == 0 else "continuation"
        _record(run, conv, turn, warmup, sent, timing, per_request, klass, late_ms)
        if per_request:
            await _per_request_metrics(run)
        messages.append(t.answer or {"role": "assistant", "content": timing.text})


def _record(
    run: _Run,
    conv: int,
    turn: int,
    warmup: bool,
    sent: float,
    timing: ChatTiming,
    per: bool,
    klass: str,
    late_ms: float | None = None,
) -> None:
    """One finished request as a RequestRecord: its class and timings, the tokens the prefix
    cache held, and the server-side figures of its /metrics delta when measured one at a
    time."""
    kind: Kind = "warmup" if warmup else ("miss" if turn == 0 else "hit")
    sample = RequestSample(
        conversation=conv,
        turn=turn,
        kind=kind,
        ttft_ms=timing.ttft_s * 1000.0,
        total_ms=timing.total_s * 1000.0,
        prompt_tokens=timing.prompt_tokens,
        completion_tokens=timing.completion_tokens,
        decode_tok_s=timing.decode_tok_s,
        prefix_queries=0.0,
        prefix_hits=0.0,
        server_ttft_ms=None,
        cached_tokens=timing.cached_tokens,
        itl_ms=timing.itl_ms,
        started_s=sent,
        klass=klass,
        late_ms=late_ms,
    )
    run.samples.append(sample)
    if run.on_request is not None and not per:
        run.on_request(sample)


async def _per_request_metrics(run: _Run) -> None:
    """Sequential runs: attach the /metrics delta of the request just recorded to it."""
    now = await fetch_metrics(run.client, run.endpoint.base_url)
    run.saw(now)
    d = now.delta(run.last)
    run.last = now
    s = run.samples[-1]
    ttft = d.ttft_sum_s / d.ttft_count * 1000.0 if d.ttft_count > 0 else None
    run.samples[-1] = dataclasses.replace(
        s, prefix_queries=d.prefix_queries, prefix_hits=d.prefix_hits, server_ttft_ms=ttft
    )
    if run.on_request is not None:
        run.on_request(run.samples[-1])


async def measure_async(
    endpoint: Endpoint,
    spec: SyntheticAgentSpec | TraceSpec,
    client: httpx.AsyncClient,
    *,
    check_alive: Callable[[], None] | None = None,
    on_request: Callable[[RequestSample], None] | None = None,
    enough: Callable[[TrialMeasurement], bool] | None = None,
    decided: Callable[[TrialMeasurement], str | None] | None = None,
) -> TrialMeasurement:
    """Warm-up conversation(s), then at least ``spec.conversations`` measured ones.

    With ``enough`` (adaptive measurement), conversations go on until ``enough(measured so
    far)`` is true or a cap (``spec.max_conversations``, ``spec.max_seconds``) is reached; the
    measurement's ``stop_reason`` says which. With ``decided``, from ``spec.decided_from``
    conversations on, a reason it returns (``dominated``) ends the measurement at once:
    conversations in flight are cancelled, what they completed is kept. More than
    ``spec.max_error_share`` failed
    requests is a MeasureError with reason ``overload``; no token for
    ``spec.stall_timeout_s`` is one with reason ``hang``.
    """
    before = await fetch_metrics(client, endpoint.base_url)
    ratio = await _tokens_per_word(client, endpoint) if _sized_in_tokens(spec) else None
    workload = make_workload(spec, ratio)
    run = _Run(endpoint, spec, client, workload, time.perf_counter(), before, on_request)
    one_at_a_time = spec.concurrency == 1 and spec.rate is None and spec.timing == "closed"
    per_request = one_at_a_time and spec.per_request_metrics
    for w in range(spec.warmup_conversations):
        await _conversation(run, -1 - w, warmup=True, per_request=per_request)
    measured_from = await fetch_metrics(client, endpoint.base_url)
    run.last = measured_from
    cap = max(spec.conversations, spec.max_conversations or spec.conversations)
    total = cap if enough is not None else spec.conversations
    stop_reason = "fixed" if enough is None else "max_conversations"
    started = time.perf_counter()
    next_conv = 0
    stop = False
    cut = asyncio.Event()  # set when ``decided`` ends the measurement

    async def one(schedule: tuple[Timetable, float] | None = None) -> None:
        """The next conversation, then the early and the adaptive stops' checks."""
        nonlocal next_conv, stop, stop_reason
        conv = next_conv
        next_conv += 1
        await _conversation(run, conv, warmup=False, per_request=per_request, schedule=schedule)
        if check_alive is not None:
            check_alive()
        done = {s.conversation for s in run.samples if s.kind == "miss"}
        if stop:
            return
        if decided is not None and len(done) >= spec.decided_from:
            partial = _partial(run.samples, run.last, _memory(endpoint, run.last))
            why = decided(partial)
            if why is not None:
                stop, stop_reason = True, why
                cut.set()
                return
        if enough is None or len(done) < spec.conversations:
            return
        if enough(_partial(run.samples, run.last)):
            stop, stop_reason = True, "precision"
        elif spec.max_seconds is not None and time.perf_counter() - started > spec.max_seconds:
            stop, stop_reason = True, "max_seconds"

    async def worker(index: int) -> None:
        """One of the C conversation slots: start after its stagger, then run conversations
        until the measurement stops."""
        await asyncio.sleep(index * spec.stagger_s)  # ramp up instead of one burst
        while not stop and next_conv < total:
            await one()

    async def poisson() -> None:
        """Open loop: conversations arrive at ``spec.rate`` per second, however many run."""
        rng = random.Random(spec.seed)
        tasks: list[asyncio.Task[None]] = []
        try:
            while not stop and next_conv < total:
                tasks.append(asyncio.create_task(one()))
                await asyncio.sleep(rng.expovariate(spec.rate or 1.0))
            await asyncio.gather(*tasks)
        finally:  # cut short: the conversations in flight go too
            for t in tasks:
                t.cancel()

    async def on_timetable() -> None:
        """Timetable: each conversation starts at its drawn time, however many run."""
        plan, t0 = Timetable(spec), time.perf_counter()
        tasks: list[asyncio.Task[None]] = []
        try:
            while not stop and next_conv < total:
                if (wait := t0 + plan.start(next_conv) - time.perf_counter()) > 0:
                    await asyncio.sleep(wait)
                if stop:
                    break
                tasks.append(asyncio.create_task(one((plan, t0))))
                await asyncio.sleep(0)  # let it take its conversation number
            await asyncio.gather(*tasks)
        finally:  # cut short: the conversations in flight go too
            for t in tasks:
                t.cancel()

    async def watch_kv() -> None:
        """Under load, /metrics is read every ``metrics_interval_s`` for the KV-cache peak."""
        while True:
            await asyncio.sleep(spec.metrics_interval_s)
            with contextlib.suppress(MeasureError):
                run.saw(await fetch_metrics(client, endpoint.base_url))

    async def load() -> None:
        """The measured conversations, in the spec's load shape."""
        if spec.timing == "timetable":
            await on_timetable()
        elif spec.rate is not None:
            await poisson()
        else:
            await asyncio.gather(*(worker(i) for i in range(spec.concurrency)))

    watcher = None if per_request else asyncio.create_task(watch_kv())
    try:
        main, cutter = asyncio.create_task(load()), asyncio.create_task(cut.wait())
        try:
            await asyncio.wait({main, cutter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cutter.cancel()
            if cut.is_set():
                main.cancel()  # decided: what is in flight would not change the answer
            with contextlib.suppress(asyncio.CancelledError):
                await main
        if not cut.is_set():
            main.result()  # a conversation's error, as before
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    after = await fetch_metrics(client, endpoint.base_url)
    run.saw(after)
    if run.requests and run.errors / run.requests > spec.max_error_share:
        raise MeasureError(
            f"{run.errors} of {run.requests} requests failed (more than "
            f"{spec.max_error_share:.0%}): the server is overloaded at this load",
            reason="overload",
        )
    memory = _memory(endpoint, after)
    delta = after.delta(measured_from)
    return TrialMeasurement(
        samples=tuple(run.samples),
        memory=memory,
        cache_config=after.cache_config,
        metrics_available=after.available,
        stop_reason=stop_reason,
        concurrency=spec.concurrency,
        trial_prefix_queries=delta.prefix_queries,
        trial_prefix_hits=delta.prefix_hits,
        failed_requests=run.errors,
        queue_ms=delta.queue_ms,
        preemptions=delta.preemptions if after.available else None,
        kv_peak=run.kv_peak,
        tokens_per_word=ratio,
        distinct=workload.distinct,
    )


def _sized_in_tokens(spec: SyntheticAgentSpec | TraceSpec) -> bool:
    """Whether the workload sizes its text in tokens, which needs the server's tokenizer ratio
    first."""
    return isinstance(spec, SyntheticAgentSpec) and bool(
        spec.tool_result_tokens or spec.context_tokens
    )


async def _tokens_per_word(client: httpx.AsyncClient, endpoint: Endpoint) -> float | None:
    """The server tokenizer's tokens per word of the synthetic vocabulary (vLLM's
    ``/tokenize``); None when the server has no such endpoint (the spec's estimate is used)."""
    text = vocabulary_sample()
    body = {"model": endpoint.model, "prompt": text, "add_special_tokens": False}
    try:
        resp = await client.post(f"{endpoint.base_url}/tokenize", json=body, timeout=30.0)
        count = int(resp.json()["count"]) if resp.status_code == 200 else 0
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None
    return count / len(text.split()) if count > 0 else None


def _memory(endpoint: Endpoint, snap: MetricsSnapshot) -> MemoryReading:
    """The server's memory now: what a simulated server reports, else read from its processes."""
    if endpoint.reported_vram_mib is not None:
        return MemoryReading(vram_mib=endpoint.reported_vram_mib, source="reported")
    return read_memory(endpoint.pids, snap.kv_cache_bytes)


def _partial(
    samples: list[RequestSample], last: MetricsSnapshot, memory: MemoryReading | None = None
) -> TrialMeasurement:
    """What is measured so far, for the early and the adaptive stops (the precision check
    needs no memory: it is then read once, at the end)."""
    return TrialMeasurement(
        samples=tuple(samples),
        memory=memory or MemoryReading(vram_mib=math.nan, source="pending"),
        cache_config=last.cache_config,
        metrics_available=last.available,
    )


def measure(
    endpoint: Endpoint,
    spec: SyntheticAgentSpec | TraceSpec,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    check_alive: Callable[[], None] | None = None,
    on_request: Callable[[RequestSample], None] | None = None,
    enough: Callable[[TrialMeasurement], bool] | None = None,
    decided: Callable[[TrialMeasurement], str | None] | None = None,
) -> TrialMeasurement:
    """Synchronous entry point: owns its event loop and HTTP client."""

    async def _go() -> TrialMeasurement:
        """The measurement on one HTTP client that never goes through a proxy."""
        # trust_env=False: a proxy from the environment must never see loopback traffic.
        async with httpx.AsyncClient(
            transport=transport, trust_env=False, verify=tls_context()
        ) as client:
            return await measure_async(
                endpoint,
                spec,
                client,
                check_alive=check_alive,
                on_request=on_request,
                enough=enough,
                decided=decided,
            )

    return run_interruptible(_go())


_T = TypeVar("_T")


def run_interruptible(main: Coroutine[Any, Any, _T]) -> _T:
    """``asyncio.run`` for a measurement: Ctrl-C or SIGTERM (``sigterm_as_interrupt``) raised
    inside one request's task propagates as KeyboardInterrupt, and the caller reports it in
    one line; asyncio would also print that task's "exception was never retrieved" traceback
    when it is collected (seen on an H100 when a session's time limit stopped a run)."""

    async def guarded() -> _T:
        asyncio.get_running_loop().set_exception_handler(_quiet_interrupts)
        return await main

    return asyncio.run(guarded())


def _quiet_interrupts(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """An event-loop handler that stays silent on interrupts (the caller reports them) and
    reports everything else."""
    if isinstance(context.get("exception"), KeyboardInterrupt | SystemExit):
        return  # the interrupt itself reaches the caller, which says it in one line
    loop.default_exception_handler(context)
