"""Streaming chat client: time to first content token over httpx, timed with perf_counter."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
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

    @property
    def decode_tok_s(self) -> float:
        """Output tokens per second after the first token (0 if not measurable)."""
        span = self.total_s - self.ttft_s
        return (
            (self.completion_tokens - 1) / span if self.completion_tokens > 1 and span > 0 else 0.0
        )


async def stream_chat(
    client: httpx.AsyncClient,
    base_url: str,
    model: str,
    messages: Sequence[dict[str, str]],
    *,
    max_tokens: int,
    temperature: float = 0.0,
    ignore_eos: bool = True,
    timeout_s: float = 300.0,
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
        "stream_options": {"include_usage": True},
    }
    if ignore_eos:
        body["ignore_eos"] = True  # vLLM extension: same output length in every trial
    first: float | None = None
    parts: list[str] = []
    usage: dict[str, Any] = {}
    chunks = 0
    t0 = time.perf_counter()
    try:
        async with client.stream(
            "POST", f"{base_url}/v1/chat/completions", json=body, timeout=timeout_s
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
                if "error" in event:
                    raise MeasureError(f"server error in stream: {event['error']}")
                if event.get("usage"):
                    usage = event["usage"]
                for choice in event.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        chunks += 1
                        if first is None:
                            first = time.perf_counter() - t0
                        parts.append(content)
    except httpx.TimeoutException as exc:
        raise MeasureError(f"request timed out after {timeout_s:.0f} s") from exc
    except httpx.HTTPError as exc:
        raise MeasureError(f"request failed: {exc}") from exc
    total = time.perf_counter() - t0
    if first is None:
        raise MeasureError("stream ended without any content token")
    return ChatTiming(
        ttft_s=first,
        total_s=total,
        completion_tokens=int(usage.get("completion_tokens", chunks)),
        prompt_tokens=int(usage.get("prompt_tokens", 0)),
        text="".join(parts),
    )
