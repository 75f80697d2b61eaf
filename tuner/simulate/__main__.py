"""``python -m tuner.simulate --model M --port P [vLLM flags]``: the simulated server as a process.

The ``local`` and ``docker`` deployers' contract tests start this instead of vLLM (``module:
tuner.simulate`` in a local profile), so process and container handling is tested without vLLM.
``--fake-startup-s S`` delays start-up; ``--fake-crash`` exits 1 with a crash line in the log.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Sequence

from tuner.config.rules import parse_flags
from tuner.simulate.engine import ModelEngine
from tuner.simulate.server import SimulatedServer


def main(argv: Sequence[str] | None = None) -> None:
    """Serve until SIGTERM."""
    args = list(sys.argv[1:] if argv is None else argv)
    f = parse_flags(args)
    name = f.get("--served-model-name") or f.get("--model") or "fake-model"
    time.sleep(float(f.get("--fake-startup-s") or 0))
    if "--fake-crash" in f:
        sys.stdout.write("RuntimeError: engine core died unexpectedly (fake)\n")
        sys.stdout.flush()
        raise SystemExit(1)
    server = SimulatedServer(ModelEngine(args, name=name), port=int(f.get("--port") or 0))
    sys.stdout.write(f"fake vLLM serving {name} on {server.base_url}\n")
    sys.stdout.flush()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.close()


if __name__ == "__main__":
    main()
