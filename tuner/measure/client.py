"""Streaming chat client: time to first content token over httpx, timed with perf_counter."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from tuner.errors import MeasureError

__all__ = ["ChatTiming", "stream_chat"]


@dataclass(frozen=True, slots=True)
class ChatTiming:
    """One streamed chat completion, as the client saw it."""

    ttft_s: float  # request sent → first chunk carrying content
    total_s: float  # request sent → end of stream
    completion_tokens: int
    prompt_tokens: int
    text: str
    # prompt tokens the server's prefix cache already held (usage.prompt_tokens_details;
    # absent means 0); None when the server sent no usage at all
    cached_tokens: int | None = None
    # inter-token latency per chunk after the first, in ms per token: a chunk that bundles k
    # tokens counts its gap divided by k (bundled chunks would otherwise fake a high rate)
    itl_ms: tuple[float, ...] = ()
    last_s: float = 0.0  # request sent → last content chunk

    @property
    def decode_tok_s(self) -> float:
        """Output tokens per second after the first chunk, from the chunks' own token counts
        (0 if not measurable)."""
        if not self.itl_ms:
            return 0.0
        mean_itl = sum(self.itl_ms) / len(self.itl_ms)
        return 1000.0 / mean_itl if mean_itl > 0 else 0.0


async def stream_chat(
    client: httpx.AsyncClient,
    base_url: str,
    model: str,
    messages: Sequence[dict[str, Any]],
    *,
    max_tokens: int,
    temperature: float = 0.0,
    ignore_eos: bool = True,
    timeout_s: float = 300.0,
    stall_timeout_s: float | None = None,
    tools: list[dict[str, Any]] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> ChatTiming:
    """POST a streaming chat completion and time it.

    TTFT is the time to the first SSE chunk whose delta has non-empty ``content``; the
    role-only chunk vLLM sends first does not count.
    """
    body: dict[str, Any] = {
        "model": model,
        "messages": list(messages),
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": True,
        # usage on every chunk: the completion-token count per chunk gives the inter-token
        # latency of chunks that carry several tokens
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    if tools:
        body["tools"] = tools  # a trace's recorded tool definitions, forwarded as recorded
    if ignore_eos:
        body["ignore_eos"] = True  # vLLM extension: same output length in every trial
    first: float | None = None
    parts: list[str] = []
    usage: dict[str, Any] = {}
    chunks = 0
    itl: list[float] = []
    last_t = 0.0
    last_tokens = 0  # completion tokens counted when the previous content chunk arrived
    t0 = clock()
    try:
        # The read timeout is the longest silence allowed between two chunks: a server that
        # answers /health but sends no token for that long is hung.
        timeout = httpx.Timeout(timeout_s, read=stall_timeout_s or timeout_s)
        async with client.stream(
            "POST", f"{base_url}/v1/chat/completions", json=body, timeout=timeout
        ) as resp:
            if resp.status_code != 200:
                detail = (await resp.aread()).decode("utf-8", errors="replace")[:300]
                raise MeasureError(f"HTTP {resp.status_code} from chat completions: {detail}")
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    event = json.loads(data)
                except json.JSONDecodeError as exc:
                    raise MeasureError(f"malformed SSE event: {data[:100]!r}") from exc
                if not isinstance(event, dict):
                    raise MeasureError(f"malformed SSE event: {data[:100]!r}")
                if "error" in event:
                    raise MeasureError(f"server error in stream: {event['error']}")
                if event.get("usage"):
                    usage = event["usage"]
                for choice in event.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        now = clock() - t0
                        chunks += 1
                        tokens = int(usage.get("completion_tokens") or chunks)
                        if first is None:
                            first = now
                        elif tokens > last_tokens:
                            itl.append((now - last_t) * 1000.0 / (tokens - last_tokens))
                        last_t, last_tokens = now, tokens
                        parts.append(content)
    except httpx.ReadTimeout as exc:
        silence = stall_timeout_s or timeout_s
        raise MeasureError(f"no token for {silence:.0f} s", reason="hang") from exc
    except httpx.TimeoutException as exc:
        raise MeasureError(f"request timed out after {timeout_s:.0f} s") from exc
    except httpx.HTTPError as exc:
        raise MeasureError(f"request failed: {exc}") from exc
    total = clock() - t0
    if first is None:
        raise MeasureError("stream ended without any content token")
    details = usage.get("prompt_tokens_details") or {}
    return ChatTiming(
        ttft_s=first,
        total_s=total,
        completion_tokens=int(usage.get("completion_tokens", chunks)),
        prompt_tokens=int(usage.get("prompt_tokens", 0)),
        text="".join(parts),
        cached_tokens=int(details.get("cached_tokens") or 0) if usage else None,
        itl_ms=tuple(itl),
        last_s=last_t,
    )
