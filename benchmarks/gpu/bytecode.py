"""Is a missing Python bytecode cache what makes vLLM start slowly on a lent GPU machine?

Usage: python benchmarks/gpu/bytecode.py PROFILE OUT_JSON
On an image that sets PYTHONDONTWRITEBYTECODE=1, in this order:
  1. how many of torch's, vllm's and transformers' modules have a cached .pyc;
  2. `import vllm.entrypoints.openai.api_server` timed twice, the image's environment;
  3. the server (the tuner's local deployer, --enforce-eager as a search trial runs) started
     twice the same way: the first also reads the weights from disk, the second from page cache;
  4. the bytecode written once (PYTHONDONTWRITEBYTECODE unset, `python -m compileall`), timed;
  5. the import and one server start again, now with the bytecode cached.
Step 3's second start against step 5's is the effect of bytecode alone (both warm page cache).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from startup import PICK, start_once  # noqa: E402

PACKAGES = ("torch", "vllm", "transformers")


def cached_share(package: str) -> dict[str, int]:
    """Modules of ``package`` and how many have a .pyc for this interpreter."""
    spec = importlib.util.find_spec(package)
    root = Path(spec.origin).parent if spec and spec.origin else None
    if root is None:
        return {"py": 0, "pyc": 0}
    tag = sys.implementation.cache_tag
    py = list(root.rglob("*.py"))
    pyc = sum((p.parent / "__pycache__" / f"{p.stem}.{tag}.pyc").exists() for p in py)
    return {"py": len(py), "pyc": pyc}


def import_s(env: dict[str, str]) -> float:
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", "import vllm.entrypoints.openai.api_server"],
                   env=env, check=True, capture_output=True)  # fmt: skip
    return round(time.monotonic() - t0, 2)


def main() -> None:
    profile, out = Path(sys.argv[1]), Path(sys.argv[2])
    cache, work = Path("/root/vllm_cache"), Path("/root/bytecode")
    image = dict(os.environ)
    result: dict[str, object] = {
        "PYTHONDONTWRITEBYTECODE": image.get("PYTHONDONTWRITEBYTECODE"),
        "before": {p: cached_share(p) for p in PACKAGES},
        "import_image_env_s": [import_s(image), import_s(image)],
    }
    out.write_text(json.dumps(result, indent=1))
    starts = []
    for i in range(2):
        starts.append(start_once(profile, f"image_env_{i}", PICK, True, cache, work))
        print(json.dumps(starts[-1]), flush=True)
    result["starts_image_env"] = starts
    out.write_text(json.dumps(result, indent=1))
    writing = {k: v for k, v in image.items() if k != "PYTHONDONTWRITEBYTECODE"}
    t0 = time.monotonic()
    for p in PACKAGES:
        spec = importlib.util.find_spec(p)
        if spec and spec.origin:
            subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0",
                            str(Path(spec.origin).parent)], env=writing, capture_output=True)  # fmt: skip
    result["compileall_s"] = round(time.monotonic() - t0, 1)
    result["after"] = {p: cached_share(p) for p in PACKAGES}
    result["import_cached_s"] = [import_s(writing), import_s(writing)]
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    start = start_once(profile, "bytecode_cached", PICK, True, cache, work)
    print(json.dumps(start), flush=True)
    result["start_cached"] = start
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("starts_image_env",)}))


if __name__ == "__main__":
    main()
