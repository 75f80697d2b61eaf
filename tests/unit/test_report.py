"""Report files, synthesis table, recommendation rules and quality warnings on fake-server studies."""

from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from tests.conftest import ROOT
from tuner.config import load_objective, load_seeds, load_space
from tuner.errors import ConfigError
from tuner.report import pareto_trials, parse_rule, recommend, write_report
from tuner.report.compare import write_compare
from tuner.report.documents import md_table
from tuner.report.synthesis import failures_by_reason, quality_warnings, synthesis_frame
from tuner.study import RunSettings, StudyPaths, StudyRunner, load_study
from tuner.testing import FAST_WORKLOAD, fake_profile


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16-deployment study on the fake server with OOM, crash and invalid points."""
    root = tmp_path_factory.mktemp("studies")
    space = load_space(ROOT / "search_spaces" / "seed_192.yaml")
    objective = load_objective(ROOT / "objectives" / "agent_multiturn.yaml")
    objective = objective.model_copy(update={"workload": FAST_WORKLOAD})
    profile = fake_profile(
        oom_when=[{"--max-num-seqs": "128", "--gpu-memory-utilization": "0.95"}],
        crash_when=[{"--max-num-seqs": "64", "--gpu-memory-utilization": "0.9"}],
        crash_retries=0,
    )
    StudyRunner(
        paths=StudyPaths.create("r", root),
        space=space,
        seeds=load_seeds(ROOT / "configs" / "strategic_12.yaml", space),
        objective=objective,
        profile=profile,
        settings=RunSettings(n_trials=16, sampler_seed=3),
    ).run()
    return root


@pytest.fixture(scope="module")
def study(study_dir: Path) -> optuna.Study:
    return load_study(StudyPaths.create("r", study_dir))


@pytest.fixture(scope="module")
def files(study: optuna.Study, study_dir: Path) -> dict[str, Path]:
    return write_report(study, study_dir / "r")


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.scripts += tag == "script"


class TestFiles:
    def test_every_file_exists_and_parses(
        self, files: dict[str, Path], study: optuna.Study
    ) -> None:
        """report.md/html, pareto.csv/json and trials.csv are written and readable."""
        assert set(files) == {"report_md", "report_html", "pareto_csv", "pareto_json", "trials_csv"}
        md = files["report_md"].read_text()
        for section in ("## Lines to paste", "## Why this one", "## Success criteria", "## Pareto front",
                        "## All trials", "## Measurement quality", "## Failed trials by reason"):  # fmt: skip
            assert section in md
        parser = _Tags()
        parser.feed(files["report_html"].read_text())
        assert "table" in parser.tags
        assert parser.scripts >= 3
        payload = json.loads(files["pareto_json"].read_text())
        assert {o["unit"] for o in payload["objectives"]} == {"ms", "MiB"}
        front, _ = pareto_trials(study)
        assert [r["trial"] for r in payload["pareto"]] == [t.number for t in front]
        trials = pd.read_csv(files["trials_csv"])
        finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.FAIL)]
        assert len(trials) == len(finished)

    def test_html_is_self_contained(self, files: dict[str, Path]) -> None:
        """plotly.js is inlined once: the report opens offline, without a CDN."""
        text = files["report_html"].read_text()
        assert text.count("<script src=") == 0  # no external script at all
        assert text.count("plotly.js v") >= 1  # the bundle is inline
        assert len(text) > 3_000_000
        assert text.count("Plotly.newPlot") >= 3


class TestSynthesis:
    def test_table_matches_stored_trials(self, study: optuna.Study) -> None:
        """Every row carries the stored values of its trial; duplicates are left out."""
        df = synthesis_frame(study).set_index("trial")
        for t in study.trials:
            if t.user_attrs.get("reason") == "duplicate" or t.state == TrialState.RUNNING:
                assert t.number not in df.index
                continue
            row = df.loc[t.number]
            assert row["mem"] == t.params["gpu_memory_utilization"]
            if t.state == TrialState.COMPLETE:
                assert row["ttft_hit_ms"] == pytest.approx(t.user_attrs["ttft_hit_ms"])
                assert row["ttft_miss_ms"] == pytest.approx(t.user_attrs["ttft_miss_ms"])
                assert row["status"].startswith("ok")
            else:
                assert row["status"] == t.user_attrs["reason"]
                assert math.isnan(row["ttft_hit_ms"])

    def test_baseline_first_with_zero_delta(self, study: optuna.Study) -> None:
        df = synthesis_frame(study)
        assert df.iloc[0]["config"] == "baseline_reference"
        assert df.iloc[0]["miss_vs_base_pct"] == pytest.approx(0.0)
        assert df.iloc[0]["hit_vs_base_pct"] == pytest.approx(0.0)

    def test_failures_grouped_by_reason(self, study: optuna.Study) -> None:
        """The provoked failures come back grouped, with their reasons, duplicates excluded."""
        groups = {g.reason: g for g in failures_by_reason(study)}
        assert "duplicate" not in groups
        assert {"oom", "crash"} <= set(groups)
        for g in groups.values():
            assert all(t.user_attrs["reason"] == g.reason for t in g.trials)


def _candidates(study: optuna.Study) -> list[FrozenTrial]:
    front, feasible = pareto_trials(study)
    assert feasible, "the fake study should have feasible points"
    return front


def _v(t: FrozenTrial, name: str) -> float:
    return float(t.user_attrs[name])


class TestRecommendation:
    def test_default_rule(self, study: optuna.Study, study_dir: Path) -> None:
        """The pick is in the best group on HIT of the feasible front points within the MISS
        criteria (the fastest leads it), with the fewest changes from the baseline among the
        members with headroom (all of them when none has room)."""
        from tuner.decide import best_reuse, changes_from, headroom, reference_params

        cands = [t for t in _candidates(study) if t.constraints["miss_vs_baseline"] <= 0]
        rec = recommend(study, parse_rule("default"), root=study_dir / "r")
        assert rec is not None
        assert rec.feasible
        g = rec.group
        assert g is not None
        assert g.on_samples  # every front trial has its measurements.json
        assert g.best.number == min(cands, key=lambda t: _v(t, "ttft_hit_ms")).number
        assert set(g.numbers) <= {t.number for t in cands}
        assert rec.trial.number in g.numbers
        ref = reference_params(study)
        roomy = [t for t in g.members if not headroom(t, best_reuse(g.members))] or g.members
        assert rec.trial in roomy
        fewest = min(changes_from(t.params, ref) for t in roomy)
        assert changes_from(rec.trial.params, ref) == fewest
        assert "within noise" in rec.explanation or "beyond the noise" in rec.explanation

    @pytest.mark.parametrize(
        ("rule", "key"),
        [
            ("objective:ttft_miss_ms", lambda t: _v(t, "ttft_miss_ms")),
            ("objective:vram_mib", lambda t: _v(t, "vram_mib")),
            ("weights:ttft_hit_ms=1", lambda t: _v(t, "ttft_hit_ms")),
            ("weights:vram_mib=1,ttft_hit_ms=0", lambda t: _v(t, "vram_mib")),
        ],
    )
    def test_rules(self, study: optuna.Study, rule: str, key: Any) -> None:
        """Each rule picks the candidate an independent computation picks."""
        expected = min(_candidates(study), key=lambda t: (key(t), t.number))
        rec = recommend(study, parse_rule(rule))
        assert rec is not None
        assert rec.trial.number == expected.number

    def test_commands_carry_the_flags(self, study: optuna.Study) -> None:
        """The command line, compose snippet and docker run all carry the trial's flags."""
        rec = recommend(study)
        assert rec is not None
        flags = rec.trial.user_attrs["flags"]
        assert rec.vllm_command.startswith("vllm serve fake-model ")
        assert " ".join(flags) in rec.vllm_command
        assert all(
            f"- {a}" in rec.compose_snippet or f'- "{a}"' in rec.compose_snippet for a in flags
        )
        assert rec.docker_run.startswith("docker run --gpus all")
        assert "HF_TOKEN" in rec.docker_run
        assert "hf_" not in rec.docker_run  # the variable name only, never a value
        assert rec.explanation.startswith(f"trial {rec.trial.number}")

    @pytest.mark.parametrize("bad", ["best", "weights:ttft_hit_ms", "weights:x=-1", "objective:"])
    def test_bad_rules_are_config_errors(self, bad: str) -> None:
        with pytest.raises(ConfigError, match="rule"):
            parse_rule(bad)

    def test_unknown_objective_named(self, study: optuna.Study) -> None:
        with pytest.raises(ConfigError, match="unknown objective 'nope'"):
            recommend(study, parse_rule("objective:nope"))


def _manual_study(rows: list[dict[str, Any]]) -> optuna.Study:
    st = optuna.create_study(directions=["minimize"] * 3)
    st.set_metric_names(["ttft_hit_ms", "ttft_miss_ms", "vram_mib"])
    dist = {"enable_prefix_caching": CategoricalDistribution([False, True, None])}
    for r in rows:
        st.add_trial(
            create_trial(
                values=[r["hit"], r["miss"], r["vram"]],
                params={"enable_prefix_caching": r["prefix"]},
                distributions=dist,
                user_attrs={
                    "ttft_hit_ms": r["hit"],
                    "ttft_miss_ms": r["miss"],
                    "vram_mib": r["vram"],
                    "speedup": r["miss"] / r["hit"],
                    "hit_rate_hit": r["rate"],
                    "ttft_hit_min_ms": r["hit"] - r["spread"],
                    "ttft_hit_max_ms": r["hit"] + r["spread"],
                    "n_hit": 9,
                    "flags": {
                        True: ["--enable-prefix-caching"],
                        False: ["--no-enable-prefix-caching"],
                        None: [],
                    }[r["prefix"]],
                },
            )
        )
    return st


class TestQuality:
    @pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
    def test_speedup_without_cache_hits_is_flagged(self) -> None:
        """The mission's artefact: a 'cache speed-up' with prefix caching off is called out."""
        st = _manual_study(
            [
                {
                    "hit": 100.0,
                    "miss": 250.0,
                    "vram": 10.0,
                    "prefix": False,
                    "rate": 0.0,
                    "spread": 5,
                },
                {
                    "hit": 60.0,
                    "miss": 200.0,
                    "vram": 12.0,
                    "prefix": True,
                    "rate": 0.95,
                    "spread": 5,
                },
            ]
        )
        warnings = quality_warnings(st, pareto_trials(st)[0])
        flagged = [n for n, w in warnings if "no prefix-cache hit" in w]
        assert flagged == [0]

    @pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
    def test_prefix_caching_on_without_hits_is_flagged(self) -> None:
        """The fp8-KV case users report: caching on, 0 % hits, nothing in the latency says so.
        Caching off with 0 % hits is no surprise and is not flagged."""
        rows = [
            {"hit": 90.0, "miss": 100.0, "vram": 10.0, "prefix": True, "rate": 0.0, "spread": 5},
            {"hit": 60.0, "miss": 200.0, "vram": 12.0, "prefix": True, "rate": 0.9, "spread": 5},
            {"hit": 95.0, "miss": 99.0, "vram": 9.0, "prefix": False, "rate": 0.0, "spread": 5},
            # no prefix flag at all: vLLM V1's default is on
            {"hit": 97.0, "miss": 98.0, "vram": 8.0, "prefix": None, "rate": 0.0, "spread": 5},
        ]
        st = _manual_study(rows)
        warnings = quality_warnings(st, pareto_trials(st)[0])
        assert [n for n, w in warnings if "the cache is not used" in w] == [0, 3]

    @pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
    def test_overlapping_front_points_are_flagged(self) -> None:
        """Two front points whose HIT ranges overlap: their difference is reported as noise."""
        st = _manual_study(
            [
                {
                    "hit": 70.0,
                    "miss": 200.0,
                    "vram": 12.0,
                    "prefix": True,
                    "rate": 0.9,
                    "spread": 15,
                },
                {
                    "hit": 75.0,
                    "miss": 190.0,
                    "vram": 11.0,
                    "prefix": True,
                    "rate": 0.9,
                    "spread": 15,
                },
                {
                    "hit": 150.0,
                    "miss": 180.0,
                    "vram": 13.0,
                    "prefix": False,
                    "rate": 0.0,
                    "spread": 2,
                },
            ]
        )
        warnings = quality_warnings(st, pareto_trials(st)[0])
        assert any("front points 0 and 1" in w for _, w in warnings)
        assert not any("front points 0 and 2" in w or "1 and 2" in w for _, w in warnings)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_compare_writes_both_fronts(study: optuna.Study, tmp_path: Path) -> None:
    """compare: each study's own front, one table per study in the markdown, one plot with a
    trace per study."""
    row = {"miss": 200.0, "vram": 10.0, "prefix": True, "rate": 0.9, "spread": 5}
    other = _manual_study([{**row, "hit": 90.0}, {**row, "hit": 80.0, "vram": 12.0}])
    fronts, paths = write_compare([study, other], tmp_path)
    assert [t.number for t in fronts[0]] == [t.number for t in pareto_trials(study)[0]]
    assert sorted(t.values[0] for t in fronts[1]) == [80.0, 90.0]
    md = paths["compare_md"].read_text()
    assert md.count(f"## {study.study_name}") == 1
    assert md.count(f"## {other.study_name}") == 1
    html = paths["compare_html"].read_text()
    assert html.count('"name":"' + other.study_name + '"') >= 1
    assert "Plotly.newPlot" in html


SIX_DIMENSIONS = """\
name: six
dimensions:
  gpu_memory_utilization: {values: [0.9], flag: --gpu-memory-utilization, label: mem}
  enable_prefix_caching:
    values: [false, true]
    flag: --enable-prefix-caching
    negative_flag: --no-enable-prefix-caching
    label: prefix
  enable_chunked_prefill:
    values: [true]
    flag: --enable-chunked-prefill
    negative_flag: --no-enable-chunked-prefill
  max_num_seqs: {values: [null], flag: --max-num-seqs}
  max_num_batched_tokens: {values: [null], flag: --max-num-batched-tokens}
  block_size: {values: [16, 32], flag: --block-size, label: block}
"""


def test_report_columns_follow_the_space(tmp_path: Path) -> None:
    """A sixth dimension (block_size, labelled 'block') is a column of report.md's tables,
    with each trial's value; dimensions without a label are titled by their name."""
    (tmp_path / "six.yaml").write_text(SIX_DIMENSIONS)
    space = load_space(tmp_path / "six.yaml")
    objective = load_objective(ROOT / "objectives" / "agent_multiturn.yaml")
    StudyRunner(
        paths=StudyPaths.create("six", tmp_path),
        space=space,
        seeds=(),
        objective=objective.model_copy(update={"workload": FAST_WORKLOAD, "criteria": None}),
        profile=fake_profile(),
        settings=RunSettings(n_trials=4, sampler_seed=0),
    ).run()
    study = load_study(StudyPaths.create("six", tmp_path))
    md = write_report(study, tmp_path / "six")["report_md"].read_text()
    header = next(line for line in md.splitlines() if line.startswith("| config | trial |"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols[2:8] == [
        "mem", "prefix", "enable_chunked_prefill", "max_num_seqs", "max_num_batched_tokens",
        "block",
    ]  # fmt: skip
    table = synthesis_frame(study)
    assert sorted(table["block"]) == [16, 16, 32, 32]


def test_markdown_cells_read_flags_and_verdicts_apart() -> None:
    """A flag reads on/off, the criteria verdict yes/no (not "off" for a trial that fails them)."""
    df = pd.DataFrame({"prefix": [True, False], "meets_criteria": [False, True]})
    assert md_table(df).splitlines()[2:] == ["| on | no |", "| off | yes |"]


class TestFrontDoor:
    """The report's top is what an operator reads in ten seconds."""

    def test_the_headline_comes_first(self, files: dict[str, Path], study: optuna.Study) -> None:
        """report.md opens with what to change, the HIT effect against the baseline with its
        interval, and how sure; then the lines to paste; the method after them."""
        md = files["report_md"].read_text().splitlines()
        body = [line for line in md[1:] if line.strip()]
        assert body[0].startswith(("**Change ", "**Keep**"))
        assert body[1].startswith("**TTFT HIT** ")
        assert "against" in body[1]
        assert "95 % interval" in body[1] or "no interval" in body[1]
        # an interval that holds 0 is said to be no proven gain
        m = re.search(r"95 % interval ([+-]\d+) to ([+-]\d+) %", body[1])
        if m is not None and int(m[1]) != 0 and int(m[2]) != 0:
            assert ("Not beyond the noise" in body[1]) == (int(m[1]) < 0 < int(m[2]))
        assert body[2].startswith("**How sure:** not validated")
        text = "\n".join(md)
        assert text.index("## Lines to paste") < text.index("## Why this one")
        assert text.index("## Why this one") < text.index("## Pareto front")

    def test_production_lines_carry_no_measurement_flag(self, files: dict[str, Path]) -> None:
        """--enable-prompt-tokens-details is added for the measurement only: the lines to paste
        leave it out (a profile that sets it in extra_args would keep it)."""
        md = files["report_md"].read_text()
        paste = md[md.index("## Lines to paste") : md.index("## Why this one")]
        assert "vllm serve" in paste
        assert "--enable-prompt-tokens-details" not in paste

    def test_what_mattered_leads_with_measurable_effects(
        self, files: dict[str, Path], study: optuna.Study
    ) -> None:
        """Measurable effects in the table; the rest folded under it, and an interval that
        cannot be computed reads 'too few trials', never 'no measurable effect'."""
        from tuner.report.documents import build_report
        from tuner.report.model import effects_frame

        rep = build_report(study)
        shown, rest = effects_frame(rep, True), effects_frame(rep, False)
        assert set(shown["reading"]) <= {"lower", "higher"}
        assert all(r == "no measurable effect" or r.startswith("too few trials (")
                   for r in rest["reading"])  # fmt: skip
        for e in rep.effects:
            if math.isnan(e.interval[0]):
                row = rest[(rest["dimension"] == e.dimension) & (rest["value"] == e.value)]
                assert row["reading"].iloc[0] == f"too few trials ({e.n} / {e.n_rest})"
        md = files["report_md"].read_text()
        section = md[md.index("## What mattered") : md.index("## All trials")]
        if not rest.empty:
            assert f"<details><summary>{len(rest)} more readings" in section


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_compare_fits_an_80_column_terminal(
    study_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In 80 columns `tuner compare` stacks the two fronts and keeps the columns that fit:
    no line wider than the terminal, no cell cut to 'na…'."""
    import io

    from rich.console import Console
    from typer.testing import CliRunner

    import tuner.cli.report
    from tuner.cli import app

    buf = io.StringIO()
    monkeypatch.setattr(tuner.cli.report, "out", Console(file=buf, width=80))
    r = CliRunner().invoke(app, ["compare", "r", "r", "--studies-dir", str(study_dir)])
    assert r.exit_code == 0, r.output
    table = [line for line in buf.getvalue().splitlines() if not line.startswith("wrote ")]
    assert max(len(line) for line in table) <= 80
    assert "…" not in buf.getvalue()
    assert buf.getvalue().count("HIT ms") == 2  # both tables, stacked, with their cells shown
    front = [str(t.number) for t in pareto_trials(load_study(StudyPaths.create("r", study_dir)))[0]]
    rows = [line.split("│")[1].strip() for line in table if line.startswith("│")]
    assert rows == front * 2
