"""Stage vLLM 0.25.0 (CUDA 13, torch 2.11) and the tuner's dependencies as wheels for the GPU machine.

For a GPU machine with Python 3.12, torch 2.11.0+cu130 and transformers, but no vLLM and no network.
This downloads, on a machine with PyPI, every wheel the GPU side lacks, then tars and splits them into
parts small enough for one transfer each: a transfer is limited to 64 MiB, the working tree included.

Usage: python benchmarks/gpu/stage.py [DIR]   (default .stage/)
  DIR/work/    the downloads (vLLM wheel, wh/, report.json, pins.txt): kept to re-stage quickly
  DIR/parts/   part_00, part_01, ... and nothing else: send one per transfer, e.g.
               carry [".stage/parts/part_03"], command `bash benchmarks/gpu/device.sh receive`
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

VLLM = "vllm==0.25.0"
PLATFORMS = [
    "manylinux_2_34_x86_64", "manylinux_2_31_x86_64", "manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_5_x86_64",
    "manylinux1_x86_64", "any",
]
# Present on the GPU machine (torch's own CUDA stack, transformers) or unneeded for a Llama on one GPU.
EXCLUDE = re.compile(
    r"^(torch.*|nvidia-(?!ml-py).*|flashinfer.*|tilelang|quack-kernels|humming-kernels|tokenspeed-mla|numba|"
    r"llvmlite|opencv-python-headless|pynvvideocodec|fastsafetensors|transformers|tokenizers|safetensors|"
    r"numpy|pillow|triton.*|cuda-.*)$"
)
EXTRA = [
    "compressed-tensors==0.17.0", "xgrammar==0.2.8", "mistral_common", "apache-tvm-ffi==0.1.15.post2",
    # the tuner itself
    "optuna>=5.0", "httpx>=0.27", "pydantic>=2.7", "ruamel.yaml>=0.18", "pandas>=2.0", "typer>=0.12",
    "rich>=13", "prometheus-client>=0.20", "psutil>=5.9", "nvidia-ml-py>=12", "plotly>=5",
    # imported by the tuner at start-up (the deployers, the dashboard): missing, nothing runs
    "docker>=7", "optuna-dashboard>=0.17", "sqlalchemy>=2.0",
]
# One transfer holds 64 MiB, and the working tree travels with every part (21 MB with the committed
# results): a part is what the tree leaves, less a margin for files a run adds before it.
TRANSFER_BYTES = 64 * 2**20
MARGIN_BYTES = 3 * 2**20


def part_bytes() -> int:
    """The largest part that travels with this checkout's tracked files in one transfer."""
    names = subprocess.run(["git", "ls-files", "-z"], capture_output=True, check=True).stdout
    tree = sum(Path(n).stat().st_size for n in names.decode().split("\0") if n and Path(n).is_file())
    size = TRANSFER_BYTES - tree - MARGIN_BYTES
    if size < 8 * 2**20:
        raise SystemExit(f"the working tree ({tree / 2**20:.0f} MiB) leaves no room for a part")
    return size


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pip(*args: str) -> None:
    plat = [a for p in PLATFORMS for a in ("--platform", p)]
    cmd = [sys.executable, "-m", "pip", *args, "--python-version", "3.12", "--only-binary=:all:", *plat]
    subprocess.run(cmd, check=True)


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".stage")
    out, parts = root / "work", root / "parts"
    wh = out / "wh"
    wh.mkdir(parents=True, exist_ok=True)
    # Only the parts in parts/: a folder carried whole must stay under the 64 MiB per call.
    if parts.exists():
        for old in parts.glob("part_*"):
            old.unlink()
    parts.mkdir(parents=True, exist_ok=True)
    pip("download", "--no-deps", "-d", str(out), VLLM)
    wheel = next(out.glob("vllm-0.25.0-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        meta_name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(z.read(meta_name).decode())
    reqs = []
    for req in meta.get_all("Requires-Dist") or []:
        if "extra ==" in req:
            continue
        name = norm(re.split(r"[\s<>=!~;\[(]", req, maxsplit=1)[0])
        if not EXCLUDE.match(name) and name != "apache-tvm-ffi":
            reqs.append(req.split(";")[0].strip())
    report = out / "report.json"
    pip("install", "--dry-run", "--ignore-installed", "--report", str(report), "--target", str(out / "t"),
        *reqs, *EXTRA)
    pins = []
    for item in json.loads(report.read_text())["install"]:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        if not EXCLUDE.match(norm(name)):
            pins.append(f"{name}=={version}")
    (out / "pins.txt").write_text("\n".join(sorted(pins)) + "\n")
    pip("download", "--no-deps", "-d", str(wh), *pins)
    tar_path = out / "all.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(wheel, arcname=wheel.name)
        for f in sorted(wh.glob("*.whl")):
            tar.add(f, arcname=f"wh/{f.name}")
    data = tar_path.read_bytes()
    n = -(-len(data) // part_bytes())
    size = -(-len(data) // n)  # n parts of equal size
    for idx in range(n):
        (parts / f"part_{idx:02d}").write_bytes(data[idx * size : (idx + 1) * size])
    tar_path.unlink()
    print(f"{len(pins)} dependency wheels + vLLM, {len(data) / 1e6:.0f} MB in {n} parts in {parts}/")
    print("carry one per call: " + ", ".join(f'"{parts}/part_{i:02d}"' for i in range(n)))


if __name__ == "__main__":
    main()
