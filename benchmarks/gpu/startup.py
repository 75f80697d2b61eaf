"""Start-up time of one configuration, eager against compiled, cold against warm cache.

Usage: python benchmarks/gpu/startup.py PROFILE OUT_JSON
Starts vLLM (the tuner's local deployer, the profile's model and fixed flags) four times, waits
healthy, stops it, and records the seconds to healthy and vLLM's own phase timings from the log:
  eager            the profile as the study runs it (--enforce-eager: no torch.compile, no graphs)
  compiled_cold    without --enforce-eager, an empty VLLM_CACHE_ROOT (the first trial of a study)
  compiled_warm    the same flags and the same cache root again (a repeated configuration)
  compiled_other   another configuration's flags, same cache root (the next trial of a study)
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from pathlib import Path

from tuner.config import load_profile
from tuner.deploy import make_deployer

PICK = ["--gpu-memory-utilization", "0.92", "--enable-prefix-caching", "--no-enable-chunked-prefill"]
OTHER = ["--gpu-memory-utilization", "0.90", "--enable-prefix-caching", "--enable-chunked-prefill",
         "--max-num-seqs", "64"]  # fmt: skip
# vLLM 0.25's log lines for two start-up phases; absent ones are left out.
PHASES = {
    "weights_s": r"Model loading took [\d.]+ Gi?B(?: memory)? and ([\d.]+) seconds",
    "graphs_s": r"Graph capturing finished in ([\d.]+) secs",
}


def start_once(profile_path: Path, name: str, flags: list[str], eager: bool, cache: Path,
               work: Path) -> dict[str, object]:  # fmt: skip
    profile = load_profile(profile_path)
    args = [a for a in profile.server.extra_args if eager or a != "--enforce-eager"]
    profile = profile.model_copy(
        update={"server": profile.server.model_copy(update={"extra_args": args})}
    )
    workdir = work / name
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with make_deployer(profile) as dep:
        dep.start(flags, workdir, env={"VLLM_CACHE_ROOT": str(cache)})
        try:
            ready = dep.wait_ready()
        finally:
            dep.stop()
    row: dict[str, object] = {"variant": name, "healthy_s": round(ready, 1),
                              "with_stop_s": round(time.monotonic() - t0, 1)}  # fmt: skip
    log = "\n".join(p.read_text(errors="replace") for p in workdir.rglob("*.log"))
    for key, pattern in PHASES.items():
        found = re.findall(pattern, log)
        if found:
            row[key] = float(found[-1])
    return row


def main() -> None:
    profile, out = Path(sys.argv[1]), Path(sys.argv[2])
    cache, work = Path("/root/vllm_cache"), Path("/root/startup")
    shutil.rmtree(cache, ignore_errors=True)
    rows = []
    for name, flags, eager in [("eager", PICK, True), ("compiled_cold", PICK, False),
                               ("compiled_warm", PICK, False), ("compiled_other", OTHER, False)]:  # fmt: skip
        try:
            rows.append(start_once(profile, name, flags, eager, cache, work))
        except Exception as exc:  # a failed start is a result too
            rows.append({"variant": name, "error": f"{type(exc).__name__}: {exc}"[:300]})
        print(json.dumps(rows[-1]), flush=True)
        out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
