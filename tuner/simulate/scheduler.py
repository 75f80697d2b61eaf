"""A continuous-batching scheduler in modelled time, the way vLLM V1's behaves (simplified).

Each step schedules the running requests first (one decode token each, or their next prefill
chunk), then waiting ones in arrival order while batch slots (``max_num_seqs``) and the step's
token budget (``max_num_batched_tokens``) last. With chunked prefill a prompt is split across
steps and shares them with decodes; without it a prompt is scheduled whole or waits (head of
line), and a long prefill stalls every decode of that step. KV blocks come from a fixed pool sized
by the memory setting; the prefix cache keeps the blocks of finished prompts (LRU) until the
pool needs them; a decode that finds no free block preempts the newest running request, which
is recomputed later, as vLLM does.

The scheduler owns no clock: :meth:`Scheduler.step` takes the time the step starts and returns
how long it lasts, so the same code runs behind the HTTP server (a thread waiting on a
:class:`~tuner.simulate.engine.Clock`) and in a pure event loop (``tuner.simulate.closed_loop``).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "BLOCK",
    "Scheduled",
    "Scheduler",
    "SchedulerConfig",
    "SimRequest",
    "StepCost",
    "block_hashes",
]

BLOCK = 16  # tokens (words) per KV block

# vLLM V1's defaults for online serving (its scheduler config picks them when unset).
DEFAULT_MAX_NUM_SEQS = 256
DEFAULT_BUDGET = 8192


def block_hashes(words: Sequence[str]) -> list[str]:
    """One chained hash per full block of ``words``, as vLLM's prefix cache keys its blocks."""
    out, h = [], hashlib.sha256()
    for i in range(len(words) // BLOCK):
        h.update(" ".join(words[i * BLOCK : (i + 1) * BLOCK]).encode())
        out.append(h.hexdigest())
    return out


@dataclass(frozen=True, slots=True)
class StepCost:
    """How long one engine step takes, in milliseconds."""

    base_ms: float = 4.0  # a step that prefills anything (attention over the prompt, sampling)
    per_token_ms: float = 0.02  # per prefill token in the step
    decode_ms: float = 0.3  # every step: the forward pass over the batch
    per_seq_ms: float = 0.01  # per request decoding in the step

    def seconds(self, prefill_tokens: int, decodes: int) -> float:
        """One engine step's duration: a decode of ``decodes`` requests, plus the prefill of
        ``prefill_tokens`` when there is one."""
        ms = self.decode_ms + self.per_seq_ms * decodes
        if prefill_tokens:
            ms += self.base_ms + self.per_token_ms * prefill_tokens
        return ms / 1000.0


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """The serving flags the scheduler obeys, and the KV pool they leave."""

    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS
    max_num_batched_tokens: int = DEFAULT_BUDGET
    chunked: bool = True
    prefix: bool = True
    kv_blocks: int = 1 << 20
    gpu_memory_utilization: float = 0.9  # what sized kv_blocks (the fake reports memory by it)

    @classmethod
    def from_flags(cls, f: Mapping[str, str | None], kv_tokens_at_full: int) -> SchedulerConfig:
        """From parsed vLLM flags; the KV pool is ``gpu_memory_utilization`` x the full size."""
        chunked = "--no-enable-chunked-prefill" not in f
        seqs, budget = f.get("--max-num-seqs"), f.get("--max-num-batched-tokens")
        max_len = int(f.get("--max-model-len") or 0)
        default_budget = DEFAULT_BUDGET if chunked else max(DEFAULT_BUDGET, max_len)
        util = float(f.get("--gpu-memory-utilization") or 0.9)
        return cls(
            max_num_seqs=int(seqs) if seqs else DEFAULT_MAX_NUM_SEQS,
            max_num_batched_tokens=int(budget) if budget else default_budget,
            chunked=chunked,
            prefix="--no-enable-prefix-caching" not in f,
            kv_blocks=max(1, int(util * kv_tokens_at_full) // BLOCK),
            gpu_memory_utilization=util,
        )


@dataclass(eq=False, slots=True)
class SimRequest:
    """One request: its prompt's block hashes (one per full block) and what happened to it."""

    hashes: list[str]
    prompt_tokens: int
    max_tokens: int
    arrival: float = 0.0
    cached_tokens: int = 0
    target: int = 0  # tokens to prefill (the prompt; prompt + output after a preemption)
    computed: int = 0
    generated: int = 0
    shared: list[str] = field(default_factory=list)  # hashed blocks held (prefix cache)
    private: int = 0  # blocks held that nobody else can hit
    admitted_at: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    last_token_at: float | None = None
    max_gap: float = 0.0  # the longest wait between two of its tokens (a decode stall)
    error: str | None = None
    preemptions: int = 0

    @property
    def done(self) -> bool:
        """Whether the request finished."""
        return self.finished_at is not None

    @property
    def ttft(self) -> float | None:
        """Time from arrival to the first token, once there is one."""
        return None if self.first_token_at is None else self.first_token_at - self.arrival


@dataclass(frozen=True, slots=True)
class Scheduled:
    """A step's outcome for one request: a token was produced (or it ended in error)."""

    request: SimRequest
    first: bool
    finished: bool


class Scheduler:
    """Continuous batching over a block pool; see the module docstring for the rules."""

    def __init__(self, cfg: SchedulerConfig, cost: StepCost | None = None) -> None:
        """An empty scheduler: no request waiting or running, an empty KV pool."""
        self.cfg = cfg
        self.cost = cost or StepCost()
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.refs: dict[str, int] = {}  # hashed blocks held by running requests
        self.lru: OrderedDict[str, None] = OrderedDict()  # hashed blocks nobody holds
        self.private = 0
        # vLLM's /metrics counters
        self.queries = 0
        self.hits = 0
        self.preemptions = 0
        self.queue_s_sum = 0.0
        self.queue_count = 0
        self.ttft_s_sum = 0.0
        self.ttft_count = 0
        self.kv_peak = 0.0

    # ---- the block pool -------------------------------------------------------------------

    @property
    def used_blocks(self) -> int:
        """KV blocks held by running requests."""
        return len(self.refs) + self.private

    @property
    def kv_usage(self) -> float:
        """Share of the pool held by running requests (cached-but-free blocks do not count)."""
        return self.used_blocks / self.cfg.kv_blocks

    def _free(self) -> int:
        """KV blocks neither held nor cached."""
        return self.cfg.kv_blocks - self.used_blocks - len(self.lru)

    def _take(self, n: int) -> bool:
        """Make room for ``n`` new private blocks, evicting cached ones (LRU) as needed."""
        if n > self._free() + len(self.lru):
            return False
        while self._free() < n:
            self.lru.popitem(last=False)
        self.private += n
        return True

    def _release(self, req: SimRequest) -> None:
        """Give back a request's KV blocks: its shared blocks become cached (least recently used
        first to go), its private ones free."""
        for h in req.shared:
            self.refs[h] -= 1
            if not self.refs[h]:
                del self.refs[h]
                self.lru[h] = None
        self.private -= req.private
        req.shared, req.private = [], 0

    # ---- requests -------------------------------------------------------------------------

    def submit(self, req: SimRequest) -> None:
        """Queue a request to prefill its prompt."""
        req.target = req.prompt_tokens
        self.waiting.append(req)

    def abort(self, req: SimRequest) -> None:
        """The client went away: free what the request holds."""
        if req in self.running:
            self.running.remove(req)
            self._release(req)
        elif req in self.waiting:
            self.waiting.remove(req)

    @property
    def busy(self) -> bool:
        """Whether any request waits or runs."""
        return bool(self.waiting or self.running)

    def _lookup(self, req: SimRequest) -> int:
        """Blocks of the request's prompt the cache holds, from the start."""
        n = 0
        if self.cfg.prefix:
            for h in req.hashes:
                if h not in self.refs and h not in self.lru:
                    break
                n += 1
        return n

    def _admit(self, req: SimRequest, now: float, budget: int) -> bool:
        """Start ``req`` if its blocks fit (prefix-cache hits reused, the last prompt token always
        computed) and, without chunked prefill, its prefill fits the step's token ``budget``;
        False to leave it waiting."""
        hit = self._lookup(req)
        # vLLM always computes the prompt's last token: a fully cached prompt gives one block back
        cached = min(hit * BLOCK, (req.target - 1) // BLOCK * BLOCK)
        hit = cached // BLOCK
        if not self.cfg.chunked and req.target - cached > budget:
            return False
        need = -(-(req.target + 1) // BLOCK) - hit
        reused = req.hashes[:hit]
        in_lru = sum(1 for h in reused if h in self.lru)
        if need > self._free() + len(self.lru) - in_lru:
            return False
        for h in reused:
            self.lru.pop(h, None)
            self.refs[h] = self.refs.get(h, 0) + 1
        req.shared = list(reused)
        self._take(need)
        req.private = need
        req.computed = cached
        self.queries += req.target
        self.hits += cached
        if req.admitted_at is None:
            req.cached_tokens = cached
            req.admitted_at = now
            self.queue_s_sum += now - req.arrival
            self.queue_count += 1
        return True

    def _register(self, req: SimRequest) -> None:
        """The prompt is computed: its full blocks become hits for others (deduplicated)."""
        if not self.cfg.prefix:
            return
        for h in req.hashes[len(req.shared) :]:
            # The private block becomes a shared one; if an identical block exists (cached, or
            # computed at the same time by another request), ours is freed and that one shared.
            self.lru.pop(h, None)
            self.refs[h] = self.refs.get(h, 0) + 1
            req.shared.append(h)
            req.private -= 1
            self.private -= 1

    def _preempt(self, victim: SimRequest) -> None:
        """Evict a running request, as vLLM's recompute preemption does: its blocks released, its
        tokens to be prefilled again, back at the head of the queue."""
        self.running.remove(victim)
        self._release(victim)
        victim.target = victim.prompt_tokens + victim.generated
        victim.computed = 0
        victim.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(victim)

    def _grow(self, req: SimRequest) -> bool:
        """Room for the request's next token; preempts the newest others when the pool is full."""
        if (req.target + req.generated) % BLOCK:
            return True
        while not self._take(1):
            victim = self.running[-1]
            self._preempt(victim)
            if victim is req:
                return False
        req.private += 1
        return True

    def step(self, now: float) -> tuple[float, list[Scheduled]]:
        """Schedule and run one step starting at ``now``: (its duration, what it produced)."""
        budget = self.cfg.max_num_batched_tokens
        plan: list[tuple[SimRequest, int]] = []
        for req in list(self.running):
            if req not in self.running:  # preempted by an earlier request of this step
                continue
            left = req.target - req.computed
            if left:
                n = min(left, budget) if self.cfg.chunked else (left if left <= budget else 0)
            else:
                n = 1 if budget and self._grow(req) else 0
            if n:
                plan.append((req, n))
                budget -= n
        plan = [(r, n) for r, n in plan if r in self.running]
        out: list[Scheduled] = []
        while self.waiting and len(self.running) < self.cfg.max_num_seqs and budget > 0:
            req = self.waiting[0]
            if not self._admit(req, now, budget):
                if not self.running and not plan:
                    # Nothing will ever free room for it: vLLM rejects such a request.
                    self.waiting.popleft()
                    req.error, req.finished_at = "does not fit the KV cache or budget", now
                    out.append(Scheduled(req, first=False, finished=True))
                    continue
                break
            self.waiting.popleft()
            self.running.append(req)
            n = min(req.target - req.computed, budget)
            plan.append((req, n))
            budget -= n
        prefill = sum(n for r, n in plan if r.computed < r.target)
        decodes = len(plan) - sum(1 for r, _ in plan if r.computed < r.target)
        duration = self.cost.seconds(prefill, decodes) if plan else 0.0
        end = now + duration
        for req, n in plan:
            if req.computed < req.target:
                req.computed += n
                if req.computed < req.target:
                    continue
                self._register(req)
            first = req.generated == 0
            req.generated += 1
            if req.last_token_at is not None:
                req.max_gap = max(req.max_gap, end - req.last_token_at)
            req.last_token_at = end
            if first:
                req.first_token_at = end
                self.ttft_s_sum += end - req.arrival
                self.ttft_count += 1
            finished = req.generated >= req.max_tokens
            if finished:
                req.finished_at = end
                self.running.remove(req)
                self._release(req)
            out.append(Scheduled(req, first, finished))
        self.kv_peak = max(self.kv_peak, self.kv_usage)
        return duration, out
