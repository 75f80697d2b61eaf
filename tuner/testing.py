"""Fakes shipped with the package: a fake vLLM OpenAI server and the ``fake`` deployer.

The fake server is a real HTTP server on 127.0.0.1 (standard library, one thread). Its TTFT
depends on the flags it was "deployed" with and on whether it has seen the prompt's prefix
before, the way vLLM's does: with prefix caching on, only the uncached tokens cost prefill time.
It exposes ``/health``, ``/v1/models``, ``/metrics`` (prefix-cache counters, TTFT histogram,
cache_config_info) and streaming ``/v1/chat/completions``.

Example:
    >>> with FakeVLLMServer(["--enable-prefix-caching"]) as srv:  # doctest: +SKIP
    ...     httpx.get(srv.base_url + "/health")
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from tuner.config.profile import FakeConfig, Profile
from tuner.config.rules import parse_flags
from tuner.deploy.base import Endpoint, InProcessDeployer, wait_healthy
from tuner.errors import ServerExited, StartupTimeout

__all__ = ["FakeDeployer", "FakeVLLMServer", "ServerModel", "matches"]

BLOCK = 16  # "tokens" (words) per cache block


def matches(
    flags: Mapping[str, str | None], conditions: Sequence[Mapping[str, str | None]]
) -> bool:
    """True when every key/value of any one condition is in ``flags``."""
    return any(all(k in flags and flags[k] == v for k, v in cond.items()) for cond in conditions)


@dataclass(frozen=True, slots=True)
class ServerModel:
    """How the fake's latency depends on its flags."""

    base_ms: float = 4.0
    per_token_ms: float = 0.02
    chunked_overhead: float = 1.3
    decode_ms: float = 0.3


class EngineCounters:
    """The engine-side counters a simulated server exposes on /metrics, as vLLM names them.

    Subclasses decide each request's latency (``admit``); the fake from its flags, the replay
    deployer from recorded samples.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.queries = 0.0
        self.hits = 0.0
        self.ttft_sum = 0.0
        self.ttft_count = 0
        self.requests = 0
        self.lock = threading.Lock()

    def record_ttft(self, seconds: float) -> None:
        with self.lock:
            self.ttft_sum += seconds
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


class _State(EngineCounters):
    def __init__(
        self, flags: Sequence[str], model: ServerModel, name: str, fail_chat: bool
    ) -> None:
        super().__init__(name)
        f = parse_flags(flags)
        self.prefix = "--no-enable-prefix-caching" not in f
        self.chunked = "--no-enable-chunked-prefill" not in f
        util = float(f.get("--gpu-memory-utilization") or 0.9)
        self.kv_bytes = int(util * 1000) * 1024 * 1024
        budget = f.get("--max-num-batched-tokens")
        self.budget = int(budget) if budget else None
        self.model = model
        self.fail_chat = fail_chat
        self.blocks: set[str] = set()

    def _hashes(self, words: list[str]) -> list[str]:
        out, h = [], hashlib.sha256()
        for i in range(len(words) // BLOCK):
            h.update(" ".join(words[i * BLOCK : (i + 1) * BLOCK]).encode())
            out.append(h.hexdigest())
        return out

    def admit(self, prompt: str) -> tuple[float, int]:
        """Seconds of prefill for ``prompt`` and its token count; updates cache and counters."""
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
            self.queries += len(words)
            self.hits += cached
            self.requests += 1
        m = self.model
        ms = m.base_ms + m.per_token_ms * (len(words) - cached)
        if self.chunked:
            # Chunked prefill splits long prompts: a small budget means more scheduler steps.
            ms *= (
                m.chunked_overhead
                if (self.budget or 8192) < 4096
                else 1.0 + (m.chunked_overhead - 1) / 3
            )
        return ms / 1000.0, len(words)

    def cache_config_labels(self) -> str:
        prefix = "True" if self.prefix else "False"
        return (
            f'block_size="{BLOCK}",enable_prefix_caching="{prefix}",'
            f'kv_cache_memory_bytes="{self.kv_bytes}"'
        )


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Small SSE writes must leave at once (Nagle + delayed ACK would add ~40 ms per event).
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        self.server.log_lines.append(format % args)

    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        st = self.server.state
        if self.path == "/health":
            self._send(200, b"")
        elif self.path == "/metrics":
            self._send(200, st.metrics().encode(), "text/plain; version=0.0.4")
        elif self.path == "/v1/models":
            self._send(200, json.dumps({"object": "list", "data": [{"id": st.name}]}).encode())
        else:
            self._send(404, b'{"error": "not found"}')

    def do_POST(self) -> None:
        st = self.server.state
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        if self.path != "/v1/chat/completions":
            self._send(404, b'{"error": "not found"}')
            return
        if st.fail_chat:
            self._send(500, b'{"error": "internal server error (fake)"}')
            return
        if body.get("model") != st.name:
            self._send(
                404, json.dumps({"error": f"model {body.get('model')!r} not served"}).encode()
            )
            return
        prompt = " ".join(m["content"] for m in body["messages"])
        t0 = time.perf_counter()
        prefill_s, n_prompt = st.admit(prompt)
        n_out = int(body.get("max_tokens", 16))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def event(obj: dict[str, Any] | str) -> None:
            data = obj if isinstance(obj, str) else json.dumps(obj)
            chunk = f"data: {data}\n\n".encode()
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.flush()

        event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        time.sleep(prefill_s)
        for i in range(n_out):
            if i == 0:
                st.record_ttft(time.perf_counter() - t0)
            else:
                time.sleep(st.model.decode_ms / 1000.0)
            event({"choices": [{"index": 0, "delta": {"content": f"w{i} "}}]})
        usage = {"prompt_tokens": n_prompt, "completion_tokens": n_out}
        event({"choices": [], "usage": usage})
        event("[DONE]")
        self.wfile.write(b"0\r\n\r\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: Any, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.state = state
        self.log_lines: list[str] = []

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client closing a keep-alive connection is normal; keep the note, print nothing.
        self.log_lines.append(f"connection from {client_address} ended with an error")


class FakeVLLMServer:
    """A running fake server; use as a context manager."""

    def __init__(
        self,
        flags: Sequence[str] = (),
        *,
        model: ServerModel | None = None,
        name: str = "fake-model",
        fail_chat: bool = False,
        port: int = 0,
        state: Any = None,
    ) -> None:
        # ``state``: what answers admit()/metrics(); the replay deployer passes recorded latencies.
        state = state or _State(flags, model or ServerModel(), name, fail_chat)
        self._server = _Server(state, port)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        host, port = self._server.server_address[:2]
        self.base_url = f"http://{host!s}:{port}"

    @property
    def requests(self) -> int:
        return int(self._server.state.requests)

    def close(self) -> None:
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
        self.close()


class FakeDeployer(InProcessDeployer):
    """``fake`` deployer: a FakeVLLMServer per trial, with scripted failures from the profile."""

    kind = "fake"
    starts = 0  # class-wide count, so flaky_crashes spans deployer instances of one process

    def __init__(self, profile: Profile) -> None:
        if not isinstance(profile.deployer, FakeConfig):
            raise TypeError(f"FakeDeployer needs a fake profile, got {profile.deployer.kind}")
        self._profile = profile
        self._cfg: FakeConfig = profile.deployer
        self._server: FakeVLLMServer | None = None
        self._failure: str | None = None
        self._log_path: Path | None = None

    def start(
        self, flags: Sequence[str], workdir: Path, env: Mapping[str, str] | None = None
    ) -> Endpoint:
        self.stop()
        workdir.mkdir(parents=True, exist_ok=True)
        args = [*self._profile.server.to_args(), *flags]
        (workdir / "command.json").write_text(json.dumps({"argv": ["fake-vllm", *args], "env": []}))
        f = parse_flags(args)
        FakeDeployer.starts += 1
        self._log_path = workdir / "server.log"
        log = [f"fake vLLM starting with {' '.join(args)}"]
        self._failure = None
        if FakeDeployer.starts <= self._cfg.flaky_crashes or matches(f, self._cfg.crash_when):
            self._failure = "crash"
            log.append("RuntimeError: engine core died unexpectedly (fake)")
        elif matches(f, self._cfg.oom_when):
            self._failure = "oom"
            log.append(
                "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB (fake)"
            )
        elif matches(f, self._cfg.hang_when):
            self._failure = "hang"
        self._log_path.write_text("\n".join(log) + "\n")
        model = ServerModel(self._cfg.base_ms, self._cfg.per_token_ms, self._cfg.chunked_overhead)
        self._server = FakeVLLMServer(
            args,
            model=model,
            name=self._profile.server.model_name,
            fail_chat=matches(f, self._cfg.error_when),
        )
        return Endpoint(base_url=self._server.base_url, model=self._profile.server.model_name)

    def wait_ready(self) -> float:
        if self._server is None:
            raise ServerExited("server was not started", reason="crash")
        time.sleep(self._cfg.startup_s)
        if self._failure in ("crash", "oom"):
            raise ServerExited(
                f"server exited with status 1 ({self._failure})",
                reason=self._failure,
                log_tail=self.log_tail(),
            )
        if self._failure == "hang":
            time.sleep(self._cfg.health_timeout_s)
            raise StartupTimeout(f"server not healthy after {self._cfg.health_timeout_s:.0f} s")
        return self._cfg.startup_s + wait_healthy(
            self._server.base_url, timeout_s=self._cfg.health_timeout_s, alive=lambda: None
        )


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m tuner.testing --model M --port P [vLLM flags]``: the fake as a real process.

    The ``local`` deployer's contract test starts this instead of vLLM (set ``module:
    tuner.testing`` in a local profile), so process handling is tested without vLLM.
    """
    import signal
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    f = parse_flags(args)
    name = f.get("--served-model-name") or f.get("--model") or "fake-model"
    delay = float(f.get("--fake-startup-s") or 0)
    time.sleep(delay)
    if "--fake-crash" in f:
        print("RuntimeError: engine core died unexpectedly (fake)", flush=True)
        raise SystemExit(1)
    server = FakeVLLMServer(args, name=name, port=int(f.get("--port") or 0))
    print(f"fake vLLM serving {name} on {server.base_url}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.close()


if __name__ == "__main__":
    main()
