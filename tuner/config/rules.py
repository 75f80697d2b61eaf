"""Validity rules: combinations vLLM refuses, detected from the flags alone, before deploying.

Each rule looks at the full argument list the server would get (deploy profile + trial flags)
and returns a message when vLLM would refuse to start. A rejected point becomes a failed trial
with reason ``invalid`` in milliseconds instead of a wasted deployment.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

__all__ = ["RULES", "parse_flags", "violations"]

Flags = dict[str, str | None]


def parse_flags(args: Sequence[str]) -> Flags:
    """``['--a', '1', '--b']`` → ``{'--a': '1', '--b': None}`` (``--x=y`` understood too)."""
    out: Flags = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            if "=" in arg:
                k, v = arg.split("=", 1)
                out[k] = v
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                out[arg] = args[i + 1]
                i += 1
            else:
                out[arg] = None
        i += 1
    return out


def _int(flags: Flags, name: str) -> int | None:
    """A flag's value as an integer (None when absent)."""
    v = flags.get(name)
    return int(v) if v is not None else None


def _chunked_off(flags: Flags) -> bool:
    """Whether the flags turn chunked prefill off."""
    return "--no-enable-chunked-prefill" in flags


def _budget_below_model_len(flags: Flags) -> str | None:
    """Without chunked prefill a prompt must fit one batch: vLLM refuses a token budget below
    max_model_len."""
    # vLLM SchedulerConfig: without chunked prefill a prompt must fit in one batch, so it
    # refuses max_num_batched_tokens < max_model_len ("ValidationError ... SchedulerConfig").
    budget = _int(flags, "--max-num-batched-tokens")
    model_len = _int(flags, "--max-model-len")
    if _chunked_off(flags) and budget is not None and model_len is not None and budget < model_len:
        return (
            f"max_num_batched_tokens ({budget}) < max_model_len ({model_len}) with chunked "
            "prefill off: vLLM refuses to start"
        )
    return None


def _budget_below_num_seqs(flags: Flags) -> str | None:
    """vLLM refuses a token budget smaller than the number of sequences it may schedule."""
    budget = _int(flags, "--max-num-batched-tokens")
    seqs = _int(flags, "--max-num-seqs")
    if budget is not None and seqs is not None and budget < seqs:
        return f"max_num_batched_tokens ({budget}) < max_num_seqs ({seqs}): vLLM refuses to start"
    return None


def _memory_fraction(flags: Flags) -> str | None:
    """gpu_memory_utilization must be a fraction in (0, 1]."""
    v = flags.get("--gpu-memory-utilization")
    if v is not None and not 0.0 < float(v) <= 1.0:
        return f"gpu_memory_utilization ({v}) must be in (0, 1]"
    return None


def _contradictory_booleans(flags: Flags) -> str | None:
    """A feature cannot be turned on and off in one command line."""
    for feature in ("prefix-caching", "chunked-prefill"):
        if f"--enable-{feature}" in flags and f"--no-enable-{feature}" in flags:
            return f"both --enable-{feature} and --no-enable-{feature} given"
    return None


# vLLM flags that take one JSON object (a space writes them with json_key / into).
_JSON_FLAGS = ("--speculative-config", "--compilation-config", "--kv-transfer-config")


def _json_flags(flags: Flags) -> str | None:
    """A JSON-valued flag must hold a JSON object (vLLM's argument parser refuses anything
    else); a speculative config must name its method."""
    for name in _JSON_FLAGS:
        raw = flags.get(name)
        if raw is None:
            continue
        try:
            value = json.loads(raw)
        except ValueError:
            return f"{name} {raw!r} is not JSON: vLLM refuses to start"
        if not isinstance(value, dict):
            return f"{name} {raw!r} is not a JSON object: vLLM refuses to start"
        if name == "--speculative-config" and not value.get("method") and not value.get("model"):
            return f"{name} {raw!r} names no method and no draft model"
    return None


RULES: dict[str, Callable[[Flags], str | None]] = {
    "chunked_prefill_budget": _budget_below_model_len,
    "budget_vs_num_seqs": _budget_below_num_seqs,
    "memory_fraction": _memory_fraction,
    "contradictory_booleans": _contradictory_booleans,
    "json_flags": _json_flags,
}


def violations(args: Sequence[str]) -> list[str]:
    """Messages of every rule the full server argument list breaks (empty when valid)."""
    flags = parse_flags(args)
    return [msg for rule in RULES.values() if (msg := rule(flags)) is not None]
