"""Emulating another machine's KV budget (the mission's two 24 GB cards) on a bigger GPU:
the memory knob keeps its meaning, the flags to paste keep it too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuner.config import ObjectiveFile
from tuner.config.profile import KvBudget, ServerArgs
from tuner.config.seeds import Seed
from tuner.config.space import SearchSpace
from tuner.report import write_report
from tuner.study import RunSettings, StudyPaths, StudyRunner, load_study
from tuner.testing import fake_profile
from tuner.trial import StoredTrial

# Two 24 GiB cards, 17.7 GiB of AWQ weights in all, 2 GiB per card of activations and buffers
MISSION = KvBudget(cards=2, card_gib=24.0, weights_gib=17.7, overhead_gib=2.0)


def test_the_utilization_becomes_the_emulated_cards_kv_bytes() -> None:
    """0.90 x 48 - 17.7 - 4 = 21.5 GiB: 88 k tokens at 256 KiB per token (Qwen3-32B's
    64 layers x 8 KV heads of 128, bf16); 0.95: 23.9 GiB."""
    server = ServerArgs(model="m", kv_budget=MISSION)
    flags = server.deployed_flags(["--gpu-memory-utilization", "0.9", "--enable-prefix-caching"])
    assert flags[:1] == ["--enable-prefix-caching"]
    assert "--gpu-memory-utilization" not in flags
    assert flags[-2] == "--kv-cache-memory-bytes"
    assert int(flags[-1]) == pytest.approx(21.5 * 2**30, rel=1e-6)
    assert int(flags[-1]) // (256 * 1024) == 88064
    high = server.deployed_flags(["--gpu-memory-utilization", "0.95"])
    assert int(high[-1]) - int(flags[-1]) == pytest.approx(0.05 * 48 * 2**30, rel=1e-6)
    # absent: vLLM's default 0.9; no budget: the flags as they are
    assert server.deployed_flags([])[-1] == flags[-1]
    assert ServerArgs(model="m").deployed_flags(["--gpu-memory-utilization", "0.9"]) == [
        "--gpu-memory-utilization", "0.9"]  # fmt: skip
    tight = ServerArgs(model="m", kv_budget=MISSION.model_copy(update={"weights_gib": 60.0}))
    assert tight.kv_budget_problem(["--gpu-memory-utilization", "0.9"]) is not None
    assert server.kv_budget_problem(["--gpu-memory-utilization", "0.9"]) is None


def test_a_cache_shorter_than_one_max_model_len_request_is_refused_before_deploying() -> None:
    """vLLM refuses to start when its KV cache cannot hold one ``max_model_len`` request: at
    131072 on the mission's cards every bf16 utilization up to 0.95 (98 k tokens) is refused,
    fp8 KV (twice the tokens) fits from 0.85 (156 k); without the model's bytes per token
    the budget cannot tell."""
    shaped = MISSION.model_copy(update={"kv_bytes_per_token": 64 * 8 * 128 * 2 * 2})
    server = ServerArgs(model="m", max_model_len=131072, kv_budget=shaped)
    bf16 = server.kv_budget_problem(["--gpu-memory-utilization", "0.95"])
    assert bf16 is not None
    assert "97894 tokens" in bf16
    assert "131072" in bf16
    fp8 = ["--kv-cache-dtype", "fp8"]
    assert server.kv_budget_problem(["--gpu-memory-utilization", "0.85", *fp8]) is None
    assert shaped.kv_tokens(0.85, "fp8") == shaped.kv_bytes(0.85) // (128 * 1024) == 156467
    low = server.kv_budget_problem(["--gpu-memory-utilization", "0.85", "--kv-cache-dtype=fp8"])
    assert low is None
    # fp8 fixed by the profile counts too; a trial's own dtype after it wins
    fixed = server.model_copy(update={"extra_args": ["--kv-cache-dtype", "fp8"]})
    assert fixed.kv_budget_problem(["--gpu-memory-utilization", "0.95"]) is None
    assert fixed.kv_budget_problem(["--kv-cache-dtype", "auto"]) is not None
    shorter = server.model_copy(update={"max_model_len": 65536})
    assert shorter.kv_budget_problem(["--gpu-memory-utilization", "0.90"]) is None
    unknown = server.model_copy(update={"kv_budget": MISSION})
    assert unknown.kv_budget_problem(["--gpu-memory-utilization", "0.95"]) is None


def test_a_study_deploys_the_budget_and_stores_the_utilization(
    tmp_path: Path, space: SearchSpace, objective: ObjectiveFile
) -> None:
    """The server's command line carries the emulated bytes; the trial's flags (what the
    report tells the user to paste) carry the utilization; a utilization that leaves no KV
    cache is refused before deploying."""
    base = {"gpu_memory_utilization": 0.92, "enable_prefix_caching": True,
            "enable_chunked_prefill": True, "max_num_seqs": None, "max_num_batched_tokens": None}  # fmt: skip
    profile = fake_profile()
    # 0.92 x 48 - 40.5 - 4 < 0 < 0.95 x 48 - 40.5 - 4
    squeezed = MISSION.model_copy(update={"weights_gib": 40.5})
    profile = profile.model_copy(
        update={"server": profile.server.model_copy(update={"kv_budget": squeezed})}
    )
    # the refused one is the criteria's baseline: the report says why nothing is judged
    seeds = (Seed("fits", {**base, "gpu_memory_utilization": 0.95}),
             Seed("baseline_reference", base))  # fmt: skip
    StudyRunner(paths=StudyPaths.create("s", tmp_path), space=space, seeds=seeds,
                objective=objective, profile=profile,
                settings=RunSettings(n_trials=2, sampler_seed=1)).run()  # fmt: skip
    study = load_study(StudyPaths.create("s", tmp_path))
    by = {StoredTrial(t).seed_name: t for t in study.trials}
    fits = by["fits"]
    assert fits.user_attrs["flags"][:2] == ["--gpu-memory-utilization", "0.95"]
    argv = json.loads((Path(fits.user_attrs["trial_dir"]) / "command.json").read_text())["argv"]
    assert "--gpu-memory-utilization" not in argv
    assert int(argv[argv.index("--kv-cache-memory-bytes") + 1]) == squeezed.kv_bytes(0.95)
    refused = by["baseline_reference"]
    assert refused.user_attrs["reason"] == "invalid"
    assert "no KV cache" in refused.user_attrs["error"]
    md = write_report(study, tmp_path / "r")["report_md"].read_text()
    line = next(x for x in md.splitlines() if x.startswith("Baseline:"))
    assert f"trial {refused.number} invalid: at this gpu_memory_utilization" in line
    assert "no trial can be judged against it" in line
