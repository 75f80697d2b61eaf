"""The answer guard and the cost objective: comparison, probes, a study on the simulated
engine (fp8 KV changes answers there, as on a real server), the constraint, report and CLI."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tuner.answers import Answer, compare
from tuner.cli._common import trial_line
from tuner.config import ObjectiveFile, load_seeds, load_space
from tuner.config.objective import Bound
from tuner.config.profile import Cost
from tuner.decide.guard import agreement, baseline_answers
from tuner.measure.guard import probes
from tuner.measure.workload import AgentWorkload
from tuner.report.headline import headline
from tuner.report.synthesis import quality_warnings, synthesis_frame
from tuner.study import RunSettings, StudyPaths, StudyRunner, load_study
from tuner.study._judged import cost_per_mtok
from tuner.testing import FAST_WORKLOAD, fake_profile
from tuner.trial import StoredTrial


def test_compare_counts_tokens_up_to_the_first_difference() -> None:
    ref = [Answer((1, 2, 3, 4)), Answer((5, 6), tool="read", asked_tool=True)]
    assert compare(ref, ref).tokens_same == 1.0
    assert compare(ref, ref).changed == 0
    assert compare(ref, ref).tools_same == 1.0
    other = [Answer((1, 2, 9, 9)), Answer((5, 6), tool="write", asked_tool=True)]
    agree = compare(ref, other)
    assert agree.first_difference == (2, None)
    assert agree.tokens_same == pytest.approx((0.5 + 1.0) / 2)
    assert agree.tools_same == 0.0
    # a shorter answer differs where it ends; a call that did not parse matches nothing
    assert compare([Answer((1, 2, 3))], [Answer((1, 2))]).first_difference == (2,)
    unparsed = [Answer((1, 2, 3, 4)), Answer((5, 6), tool=None, asked_tool=True)]
    assert compare(ref, unparsed).tools_same == 0.0
    assert compare(unparsed, ref).tools_same is None  # the reference made no call that parses
    assert Answer.from_json(ref[1].to_json()) == ref[1]


def test_probes_are_fixed_prompts_no_measured_request_sent() -> None:
    work = AgentWorkload(FAST_WORKLOAD)
    a = probes(work, 4, work.probe_tools)
    assert a == probes(AgentWorkload(FAST_WORKLOAD), 4, work.probe_tools)
    assert [p.tools is not None for p in a] == [False, True, False, True]
    measured = {str(work.conversation(i).opening) for i in range(FAST_WORKLOAD.conversations)}
    assert not measured & {str(p.messages[:1]) for p in a}
    assert all(p.messages[-1]["role"] == "user" for p in a)


def _study(
    tmp_path: Path, objective: ObjectiveFile, on_end: Any = None, **profile: object
) -> StudyRunner:
    extended = load_space(ROOT / "search_spaces" / "agent_extended.yaml")
    seeds = load_seeds(ROOT / "configs" / "strategic_12.yaml", extended)
    base = seeds[0]  # baseline_reference
    fp8 = type(base)("fp8_kv", {**base.params, "kv_cache_dtype": "fp8"})
    again = type(base)("ngram", {**base.params, "speculative_method": "ngram",
                                 "num_speculative_tokens": 2})  # fmt: skip
    prof = fake_profile().model_copy(update=profile)
    return StudyRunner(
        paths=StudyPaths.create("s", tmp_path),
        space=extended,
        seeds=(base, fp8, again),
        objective=objective,
        profile=prof,
        settings=RunSettings(n_trials=3, sampler_seed=1),
        on_trial_end=on_end,
    )


def test_a_study_says_which_configuration_changed_the_answers(
    tmp_path: Path, objective: ObjectiveFile
) -> None:
    """The baseline answers as itself; a configuration that keeps the answers (speculation on
    the simulated engine) reads the same; fp8 KV differs after a few tokens on every probe and
    its tool calls name another tool. The constraint makes it infeasible; the report's warnings,
    the headline of a pick that changed answers, and the CLI line say so."""
    obj = objective.model_copy(update={"constraints": [Bound(metric="answers_same", min=0.99)]})
    _study(tmp_path, obj).run()
    study = load_study(StudyPaths.create("s", tmp_path))
    by = {StoredTrial(t).seed_name: t for t in study.trials}
    base, fp8, spec = by["baseline_reference"], by["fp8_kv"], by["ngram"]
    assert base.user_attrs["answers_same"] == 1.0 == spec.user_attrs["answers_same"]
    assert fp8.user_attrs["answers_changed"] == 6
    assert 0 < fp8.user_attrs["answers_same"] < 0.99
    assert fp8.user_attrs["tools_same"] == 0.0
    assert spec.user_attrs["tools_same"] == 1.0
    assert fp8.constraints["answers_same>=0.99"] > 0 >= spec.constraints["answers_same>=0.99"]
    warned: dict[int, str] = {}
    for n, w in quality_warnings(study, []):  # a trial may have several warnings
        warned[n] = warned.get(n, "") + w + "; "
    assert "answers differ from the baseline's on 6 of 6" in warned[fp8.number]
    assert "answers differ" not in warned.get(spec.number, "")
    table = synthesis_frame(study).set_index("config")
    assert table.loc["fp8_kv", "answers_same"] == fp8.user_attrs["answers_same"]
    assert table.loc["baseline_reference", "answers_same"] == 1.0
    agree = agreement(baseline_answers(study), fp8)
    assert agree is not None
    assert agree.changed == 6

    class Rec:  # the headline reads only the pick's trial and validation
        trial, validation, group = fp8, None, None

    text = " ".join(line.markdown() for line in headline(study, Rec()))  # type: ignore[arg-type]
    assert "**Answers CHANGED:** 6 of 6 greedy probes differ" in text


def test_the_cli_line_says_answers_changed(tmp_path: Path, objective: ObjectiveFile) -> None:
    lines: list[str] = []
    _study(tmp_path, objective, on_end=lambda o: lines.append(trial_line(o))).run()
    assert "answers same" in lines[0]
    assert "answers changed 6" in lines[1]
    assert "answers same" in lines[2]


def test_no_guard_asks_nothing(tmp_path: Path, objective: ObjectiveFile) -> None:
    _study(tmp_path, objective.model_copy(update={"guard": None})).run()
    study = load_study(StudyPaths.create("s", tmp_path))
    assert not [t for t in study.trials if "guard_answers" in t.user_attrs]


def test_cost_per_million_tokens(tmp_path: Path, objective: ObjectiveFile) -> None:
    """$2.5 per GPU-hour on 2 GPUs at 1000 good tokens/s: 5 / 3.6 M tokens per hour."""
    assert cost_per_mtok(5.0, 1000.0) == pytest.approx(5.0 / 3.6)
    assert math.isnan(cost_per_mtok(None, 1000.0))
    assert cost_per_mtok(5.0, 0.0) == math.inf
    _study(tmp_path, objective, cost=Cost(gpu_hour=2.5, gpus=2)).run()
    study = load_study(StudyPaths.create("s", tmp_path))
    t = study.trials[0]
    tok_s = t.user_attrs["throughput_tok_s"]  # no SLOs: every request counts
    assert t.user_attrs["cost_per_mtok"] == pytest.approx(5.0 / (tok_s * 3600 / 1e6))


def test_what_cannot_be_measured_is_refused_before_any_deployment(
    tmp_path: Path, objective: ObjectiveFile
) -> None:
    """cost_per_mtok without a price, a guard constraint without the guard: one line each."""
    from tuner.config.objective import ObjectiveSpec
    from tuner.errors import ConfigError

    costly = objective.model_copy(
        update={"objectives": [*objective.objectives, ObjectiveSpec(name="cost_per_mtok")]}
    )
    with pytest.raises(ConfigError, match="add `cost: {gpu_hour: ...}` to the profile"):
        _study(tmp_path, costly).run()
    unguarded = objective.model_copy(
        update={"guard": None, "constraints": [Bound(metric="answers_same", min=0.99)]}
    )
    with pytest.raises(ConfigError, match="needs the answer guard"):
        _study(tmp_path, unguarded).run()
    assert not (tmp_path / "s" / "trials").exists() or not any(
        (tmp_path / "s" / "trials").iterdir()
    )


def test_a_server_without_token_ids_says_how_to_turn_the_guard_off() -> None:
    """A server that answers without token ids (not vLLM, or too old) gets one clear line; the
    trial keeps its measurement (deploy_and_measure records it as the guard's note)."""
    import http.server
    import json as _json
    import threading

    from tuner.errors import MeasureError
    from tuner.measure.guard import Probe, ask

    class Plain(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = _json.dumps({"choices": [{"message": {"content": "hi"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Plain)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(MeasureError, match="guard: null"):
            ask(url, "m", [Probe(({"role": "user", "content": "x"},))], max_tokens=4, seed=0)
    finally:
        server.shutdown()
        server.server_close()
