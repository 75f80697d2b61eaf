"""A simulated vLLM OpenAI-compatible server: a real HTTP server on 127.0.0.1, any engine behind.

Standard library only (``http.server``, one thread per connection). It serves ``/health``,
``/v1/models``, ``/metrics`` (the engine's counters) and streaming ``/v1/chat/completions``
with a final usage chunk, the way vLLM does. How long the first token takes is the engine's
business; the server only waits it out on its :class:`~tuner.simulate.engine.Clock`.

Example:
    >>> with SimulatedServer(ModelEngine(["--enable-prefix-caching"])) as srv:  # doctest: +SKIP
    ...     httpx.get(srv.base_url + "/health")
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

from tuner.simulate.engine import Clock, Engine, PromptTooLong, WallClock

__all__ = ["SimulatedServer"]


class _Handler(BaseHTTPRequestHandler):
    """The OpenAI-compatible HTTP endpoints of a simulated vLLM: /health, /metrics, /v1/models,
    /tokenize and streaming /v1/chat/completions."""

    server: _Server
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        """Send small writes at once (no Nagle): an SSE event must not wait for the next."""
        super().setup()
        # Small SSE writes must leave at once (Nagle + delayed ACK would add ~40 ms per event).
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Keep the access log with the server, printing nothing."""
        self.server.log_lines.append(format % args)

    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        """A whole response with its body."""
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        """/health, /metrics and /v1/models, as vLLM answers them."""
        engine = self.server.engine
        if self.path == "/health":
            self._send(200, b"")
        elif self.path == "/metrics":
            self._send(200, engine.metrics().encode(), "text/plain; version=0.0.4")
        elif self.path == "/v1/models":
            self._send(200, json.dumps({"object": "list", "data": [{"id": engine.name}]}).encode())
        else:
            self._send(404, b'{"error": "not found"}')

    def do_POST(self) -> None:
        """/tokenize, and /v1/chat/completions streamed as server-sent events with usage (cached
        prompt tokens included), or the HTTP error vLLM gives."""
        engine = self.server.engine
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        if self.path == "/tokenize":  # one word, one token
            count = len(str(body.get("prompt", "")).split())
            self._send(200, json.dumps({"count": count, "tokens": list(range(count))}).encode())
            return
        if self.path != "/v1/chat/completions":
            self._send(404, b'{"error": "not found"}')
            return
        if engine.fail_chat:
            self._send(500, b'{"error": "internal server error (simulated)"}')
            return
        if body.get("model") != engine.name:
            self._send(
                404, json.dumps({"error": f"model {body.get('model')!r} not served"}).encode()
            )
            return
        # Recorded assistant turns may carry tool_calls and no content: all of it is prompt.
        prompt = " ".join(
            m["content"] if isinstance(m.get("content"), str) else json.dumps(m)
            for m in body["messages"]
        )
        n_out = int(body.get("max_tokens", 16))
        clock = self.server.clock
        try:
            gen = engine.generate(prompt, n_out, clock)
        except PromptTooLong as exc:
            err = {"error": {"message": str(exc), "type": "BadRequestError", "code": 400}}
            self._send(400, json.dumps(err).encode())
            return
        if not body.get("stream"):
            self._answer(body, prompt, gen)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def event(obj: dict[str, Any] | str) -> None:
            """One server-sent event, as its own HTTP chunk."""
            data = obj if isinstance(obj, str) else json.dumps(obj)
            chunk = f"data: {data}\n\n".encode()
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.flush()

        options = body.get("stream_options") or {}
        continuous = bool(options.get("continuous_usage_stats"))

        def usage(done: int) -> dict[str, Any]:
            """The usage block vLLM streams: prompt, completion and cached prompt tokens."""
            return {
                "prompt_tokens": gen.prompt_tokens,
                "completion_tokens": done,
                "prompt_tokens_details": {"cached_tokens": gen.cached_tokens},
            }

        done = 0
        try:
            event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
            for _ in gen:
                chunk: dict[str, Any] = {
                    "choices": [{"index": 0, "delta": {"content": f"w{done} "}}]
                }
                done += 1
                if continuous:
                    chunk["usage"] = usage(done)
                event(chunk)
        finally:
            gen.close()  # a client gone mid-stream frees its slot, as vLLM aborts it
        if options.get("include_usage"):
            event({"choices": [], "usage": usage(done)})
        event("[DONE]")
        self.wfile.write(b"0\r\n\r\n")

    def _answer(self, body: dict[str, Any], prompt: str, gen: Any) -> None:
        """A non-streamed answer: its greedy token ids (``return_token_ids``) and, when asked
        for a tool call, one naming a tool chosen by the prompt, as vLLM answers with a tool
        parser (a 400 without one: ``tool_parser`` unset on the engine is not modelled)."""
        engine = self.server.engine
        try:
            n = sum(1 for _ in gen)
        finally:
            gen.close()
        digest = hashlib.sha256(prompt.encode()).digest()
        drift = getattr(engine, "answer_drift", None)
        ids = [
            (digest[i % 32] * 131 + i * 7 + (1 if drift is not None and i >= drift else 0)) % 32000
            for i in range(n)
        ]
        message: dict[str, Any] = {"role": "assistant", "content": " ".join(f"w{i}" for i in ids)}
        tools = body.get("tools") or []
        if tools and body.get("tool_choice") == "required":
            pick = (digest[0] + (1 if drift is not None else 0)) % len(tools)
            name = tools[pick]["function"]["name"]
            message = {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_0", "type": "function",
                 "function": {"name": name, "arguments": json.dumps({"query": "q"})}}
            ]}  # fmt: skip
        choice = {"index": 0, "message": message, "finish_reason": "length"}
        if body.get("return_token_ids"):
            choice["token_ids"] = ids
        usage = {"prompt_tokens": gen.prompt_tokens, "completion_tokens": n}
        self._send(200, json.dumps({"choices": [choice], "usage": usage}).encode())


class _Server(ThreadingHTTPServer):
    """A threading HTTP server on 127.0.0.1 holding the engine and its clock."""

    daemon_threads = True

    def __init__(self, engine: Engine, clock: Clock, port: int = 0) -> None:
        """Listen on 127.0.0.1 (``port`` 0: a free one) for ``engine`` on ``clock``."""
        super().__init__(("127.0.0.1", port), _Handler)
        self.engine = engine
        self.clock = clock
        self.log_lines: list[str] = []

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client closing its connection is normal: note it, print nothing."""
        # A client closing a keep-alive connection is normal; keep the note, print nothing.
        self.log_lines.append(f"connection from {client_address} ended with an error")


class SimulatedServer:
    """A running simulated server for ``engine``; use as a context manager (or ``close()``).

    ``clock`` defaults to a :class:`~tuner.simulate.engine.WallClock`; ``port`` 0 picks a free
    one. ``base_url`` is where it answers.
    """

    def __init__(self, engine: Engine, *, clock: Clock | None = None, port: int = 0) -> None:
        """Serve ``engine`` on 127.0.0.1 (``port`` 0: a free one) in a background thread."""
        self.engine = engine
        self._server = _Server(engine, clock or WallClock(), port)
        # shutdown() waits for serve_forever's next poll: the default 0.5 s was a third of a
        # simulated deployment's time (tests and benchmarks stop hundreds of them).
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        host, bound = self._server.server_address[:2]
        self.base_url = f"http://{host!s}:{bound}"

    @property
    def requests(self) -> int:
        """Chat requests the engine admitted so far."""
        return self.engine.requests

    def close(self) -> None:
        """Stop the engine and the HTTP server."""
        self.engine.close()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the server, whatever ended the block."""
        self.close()
