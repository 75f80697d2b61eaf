"""Decisions under noise: bootstrap intervals, groups within noise, the pick, effects, and
adaptive measurement on the simulated engine."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import create_trial

from tuner.config import load_objective
from tuner.decide import best_group, changes_from, effects, load_observations, validation_candidates
from tuner.measure import measure
from tuner.metrics import bootstrap_diff, bootstrap_interval, within_precision
from tuner.report import parse_rule, recommend
from tuner.schema import MeasurementsDoc, RequestRecord, TrialFolder
from tuner.study._trial import precise_enough
from tuner.testing import FAST_WORKLOAD, fake_server
from tuner.types import Endpoint


def _slow_interval(xs: list[float], seed: int, n: int = 2000) -> tuple[float, float]:
    """Reference: the same percentile bootstrap, one resample at a time."""
    rng = np.random.default_rng(seed)
    arr = np.asarray(xs)
    idx = rng.integers(0, len(arr), size=(n, len(arr)))
    meds = [float(np.median(arr[row])) for row in idx]
    lo, hi = np.quantile(meds, [0.025, 0.975])
    return float(lo), float(hi)


class TestIntervals:
    def test_matches_the_reference_and_is_repeatable(self) -> None:
        """Vectorised bootstrap = one-at-a-time bootstrap with the same draws; same seed, same
        interval; another seed, another."""
        xs = list(np.random.default_rng(3).normal(100, 10, 25))
        assert bootstrap_interval("median", xs, seed=1) == pytest.approx(_slow_interval(xs, 1))
        assert bootstrap_interval("median", xs, seed=1) == bootstrap_interval("median", xs, seed=1)
        # (a median's interval ends on sample values: compare another seed on the mean)
        assert bootstrap_interval("mean", xs, seed=1) != bootstrap_interval("mean", xs, seed=2)

    def test_known_cases(self) -> None:
        """A constant sample has a point interval; nothing measured has none; an interval
        holds its statistic."""
        assert bootstrap_interval("p90", [7.0] * 9) == (7.0, 7.0)
        assert all(math.isnan(v) for v in bootstrap_interval("median", []))
        xs = [float(v) for v in range(1, 40)]
        lo, hi = bootstrap_interval("median", xs)
        assert lo <= 20.0 <= hi

    def test_coverage_of_the_mean(self) -> None:
        """Over 200 seeded samples of N(0, 1), n = 30, the 95 % interval of the mean covers 0
        about 95 % of the time (percentile bootstrap undercovers a little at small n)."""
        rng = np.random.default_rng(11)
        covered = 0
        for i in range(200):
            lo, hi = bootstrap_interval("mean", list(rng.normal(0, 1, 30)), seed=i, resamples=500)
            covered += lo <= 0 <= hi
        assert 0.88 <= covered / 200 <= 0.99

    def test_difference(self) -> None:
        """Same distribution: the difference's interval contains 0; 10 sigma apart: it does not;
        a stricter level (Bonferroni) gives a wider interval."""
        rng = np.random.default_rng(5)
        a, b = list(rng.normal(100, 2, 30)), list(rng.normal(100, 2, 30))
        lo, hi = bootstrap_diff("median", a, b)
        assert lo <= 0 <= hi
        lo, hi = bootstrap_diff("median", [x + 20 for x in a], b)
        assert lo > 0
        narrow = bootstrap_diff("median", a, b, level=0.95)
        wide = bootstrap_diff("median", a, b, level=1 - 0.05 / 4)
        assert wide[0] < narrow[0]
        assert wide[1] > narrow[1]


def _record(kind: str, ttft: float, i: int) -> RequestRecord:
    return RequestRecord(
        i, 0 if kind == "miss" else 1, kind, ttft, ttft, 100, 8, 0.0, 0.0, 0.0, None
    )  # type: ignore[arg-type]


DIST = {
    "mem": CategoricalDistribution([0.9, 0.95]),
    "prefix": CategoricalDistribution([False, True]),
    "seqs": CategoricalDistribution([None, 32]),
}


def _study(root: Path, rows: list[dict[str, Any]]) -> optuna.Study:
    """A constructed study: each row's HIT samples in its trial folder, values their medians."""
    st = optuna.create_study(directions=["minimize"] * 3, study_name="d")
    st.set_metric_names(["ttft_hit_ms", "ttft_miss_ms", "vram_mib"])
    st.set_user_attr("criteria", {"baseline": "base"})
    rng = np.random.default_rng(0)
    for i, r in enumerate(rows):
        hit = list(rng.normal(r["hit"], r.get("sd", 2.0), 30))
        miss = list(rng.normal(r.get("miss", 300.0), 2.0, 10))
        doc = MeasurementsDoc(
            trial=i,
            params=r["params"],
            flags=[],
            startup_s=1.0,
            summary={},
            samples=[_record("hit", x, j) for j, x in enumerate(hit)]
            + [_record("miss", x, j) for j, x in enumerate(miss)],
        )
        TrialFolder.of(root, i).write_measurements(doc)
        attrs = {"ttft_hit_ms": float(np.median(hit)), "vram_mib": r["vram"], **r.get("attrs", {})}
        if "seed" in r:
            attrs["seed_name"] = r["seed"]
        st.add_trial(
            create_trial(
                values=[float(np.median(hit)), float(np.median(miss)), r["vram"]],
                params=r["params"],
                distributions=DIST,
                user_attrs=attrs,
            )
        )
    return st


BASE = {"mem": 0.9, "prefix": False, "seqs": None}


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
class TestGroupsAndRule:
    def test_ties_are_grouped_and_the_smallest_change_wins(self, tmp_path: Path) -> None:
        """A (100 ms, 2 changes) and B (101 ms, 1 change) are within noise; C (150 ms) is not.
        The default rule picks B and says why, with the numbers."""
        st = _study(
            tmp_path,
            [
                {"params": BASE, "hit": 300.0, "vram": 10.0, "seed": "base"},
                {"params": {"mem": 0.95, "prefix": True, "seqs": None}, "hit": 100.0, "vram": 9.0},
                {"params": {"mem": 0.9, "prefix": True, "seqs": None}, "hit": 101.0, "vram": 11.0},
                {"params": {"mem": 0.95, "prefix": True, "seqs": 32}, "hit": 150.0, "vram": 8.0},
            ],
        )
        trials = st.get_trials()
        obs = load_observations(st, tmp_path, trials)
        g = best_group(st, trials[1:], "ttft_hit_ms", obs)
        assert g.best.number in (1, 2)  # which of the two tied is faster is the noise's call
        assert sorted(g.numbers) == [1, 2]
        assert g.comparisons == 2
        assert g.diffs[3][0] > 0  # C is slower beyond the noise
        rec = recommend(st, parse_rule("default"), root=tmp_path)
        assert rec is not None
        assert rec.trial.number == 2
        assert "Trials 1 and 2 are within noise" in rec.explanation
        assert "changes 1 setting(s) from the baseline, where trial 1 changes 2" in rec.explanation

    def test_validation_takes_the_fastest_not_the_fewest_changes(self, tmp_path: Path) -> None:
        """Three within noise: B (1 change) is the search's pick, then C (2 changes), then A
        (3 changes), the fastest by its one deployment. Validation redeploys B and A (and the
        baseline): only a candidate can be found faster by fresh deployments."""
        st = _study(
            tmp_path,
            [
                {"params": BASE, "hit": 300.0, "vram": 10.0, "seed": "base"},
                {"params": {"mem": 0.95, "prefix": True, "seqs": 32}, "hit": 100.0, "vram": 12.0},
                {"params": {"mem": 0.9, "prefix": True, "seqs": None}, "hit": 101.5, "vram": 9.0},
                {"params": {"mem": 0.95, "prefix": True, "seqs": None}, "hit": 101, "vram": 10.0},
            ],
        )
        rec = recommend(st, parse_rule("default"), root=tmp_path)
        assert rec is not None
        assert rec.group is not None
        assert sorted(rec.group.numbers) == [1, 2, 3]
        assert rec.trial.number == 2
        assert [t.number for t in rec.runners_up][:1] == [3]  # the group's order: changes
        got = [t.number for t in validation_candidates(st, tmp_path, 2)]
        assert got == [2, 1, 0]  # the criteria's baseline seed last
        assert [t.number for t in validation_candidates(st, tmp_path, 3)] == [2, 1, 3, 0]

    def test_a_point_dominated_by_noise_is_still_a_candidate(self, tmp_path: Path) -> None:
        """B is 1 % slower than A on HIT with a worse MISS at the same VRAM: off the front on
        one deployment each, yet the next fastest on HIT, so validation re-measures it before
        C, a front point 30 % slower (the front alone would have skipped B)."""
        st = _study(
            tmp_path,
            [
                {"params": BASE, "hit": 300.0, "vram": 10.0, "seed": "base"},
                {"params": {"mem": 0.95, "prefix": True, "seqs": None}, "hit": 100.0,
                 "sd": 0.5, "miss": 290.0, "vram": 9.0},
                {"params": {"mem": 0.95, "prefix": True, "seqs": 32}, "hit": 101.0,
                 "sd": 0.5, "miss": 310.0, "vram": 9.0},
                {"params": {"mem": 0.9, "prefix": True, "seqs": None}, "hit": 130.0,
                 "miss": 280.0, "vram": 8.0},
            ],
        )  # fmt: skip
        front = {t.number for t in st.best_trials}
        assert 2 not in front
        assert {1, 3} <= front
        rec = recommend(st, parse_rule("default"), root=tmp_path)
        assert rec is not None
        assert rec.trial.number == 1
        got = [t.number for t in validation_candidates(st, tmp_path, 2, st.trials[0])]
        assert got == [1, 2, 0]

    def test_inside_a_group_headroom_weighs_before_fewest_changes(self, tmp_path: Path) -> None:
        """Two members within noise: the one with fewer changes ran its KV cache at 0.98 and
        lost prefix reuse; the one with room is picked, and the report says why."""
        st = _study(
            tmp_path,
            [
                {"params": BASE, "hit": 300.0, "vram": 10.0, "seed": "base"},
                {"params": {"mem": 0.9, "prefix": True, "seqs": None}, "hit": 100.0, "vram": 9.0,
                 "attrs": {"kv_peak": 0.98, "cached_share_hit": 0.80}},
                {"params": {"mem": 0.95, "prefix": True, "seqs": 32}, "hit": 100.5, "vram": 9.0,
                 "attrs": {"kv_peak": 0.61, "cached_share_hit": 0.93}},
            ],
        )  # fmt: skip
        rec = recommend(st, parse_rule("default"), root=tmp_path)
        assert rec is not None
        assert rec.group is not None
        assert sorted(rec.group.numbers) == [1, 2]
        assert rec.trial.number == 2  # more changes, but room
        from tuner.decide import best_reuse, headroom

        near = headroom(st.trials[1], best_reuse(rec.group.members))
        assert near == ["KV cache peaked at 0.98 of its capacity", "prefix reuse 80% against 93%"]
        assert headroom(st.trials[2], best_reuse(rec.group.members)) == []

    def test_a_median_and_its_tail_moved_apart_are_said(self, tmp_path: Path) -> None:
        """A knob that makes ITL's median better and its p90 worse, each measurably, is found
        (as chunked prefill without prefix caching did on an H200); a knob that moves both
        the same way is not."""
        from tuner.decide import tails_apart

        rows = [
            {"params": {**BASE, "prefix": p}, "hit": 100.0 + i, "vram": 9.0,
             "attrs": {"itl_ms": (10.0 if p else 20.0) + i, "itl_p90_ms": (90.0 if p else 30.0) + i,
                       "e2e_ms": (50.0 if p else 60.0) + i, "e2e_p90_ms": (80.0 if p else 90.0) + i}}
            for p in (True, False) for i in (0.0, 0.5, 1.0)
        ]  # fmt: skip
        st = _study(tmp_path, rows)
        found = tails_apart(st, st.trials)
        assert [(m.dimension, m.value, m.metric, t.metric) for m, t in found] == [
            ("prefix", True, "itl_ms", "itl_p90_ms")
        ]
        assert found[0][0].delta < 0 < found[0][1].delta

    def test_one_trial_on_a_side_reads_too_few_trials(self, tmp_path: Path) -> None:
        """A dimension value measured on one trial (or whose other values share one trial) has
        no interval for its effect: the report reads "too few trials (n / m)", never "no
        measurable effect" (prefix caching's x3 on HIT was read so in a quick start)."""
        from tuner.report.model import reading

        st = _study(
            tmp_path,
            [
                {"params": BASE, "hit": 300.0, "vram": 10.0, "seed": "base"},
                {"params": {"mem": 0.95, "prefix": True, "seqs": None}, "hit": 100.0, "vram": 9.0},
                {"params": {"mem": 0.9, "prefix": True, "seqs": None}, "hit": 101.0, "vram": 9.0},
                {"params": {"mem": 0.9, "prefix": True, "seqs": 32}, "hit": 100.5, "vram": 9.0},
            ],
        )
        found = {(e.dimension, e.value, e.metric): e for e in effects(st, st.trials)}
        assert reading(found[("mem", 0.95, "ttft_hit_ms")]) == "too few trials (1 / 3)"
        assert reading(found[("seqs", 32, "ttft_hit_ms")]) == "too few trials (1 / 3)"
        assert reading(found[("prefix", True, "ttft_hit_ms")]) == "too few trials (3 / 1)"

    def test_a_clear_winner_stands_alone(self, tmp_path: Path) -> None:
        """When the fastest is beyond the noise of every other, it is the group, even with more
        changes than another candidate."""
        st = _study(
            tmp_path,
            [
                {"params": BASE, "hit": 300.0, "vram": 10.0, "seed": "base"},
                {"params": {"mem": 0.95, "prefix": True, "seqs": 32}, "hit": 60.0, "vram": 12.0},
                {"params": {"mem": 0.9, "prefix": True, "seqs": None}, "hit": 100.0, "vram": 9.0},
            ],
        )
        rec = recommend(st, parse_rule("default"), root=tmp_path)
        assert rec is not None
        assert rec.group is not None
        assert rec.trial.number == 1
        assert rec.group.numbers == [1]
        assert "beyond the noise" in rec.explanation

    def test_changes_counted_from_the_baseline_or_defaults(self) -> None:
        assert changes_from({"a": 1, "b": None}, {"a": 1, "b": 2}) == 1
        assert changes_from({"a": 1, "b": None}, None) == 1  # null: vLLM's default

    def test_effects_find_what_mattered(self, tmp_path: Path) -> None:
        """Prefix caching lowers HIT by ~100 ms (measurable, interval excludes 0); the memory
        setting does nothing measurable."""
        rows = []
        for mem in (0.9, 0.95):
            for prefix in (False, True):
                for seqs in (None, 32):
                    hit = 200.0 - 100.0 * prefix + (1.0 if seqs else 0.0)
                    params = {"mem": mem, "prefix": prefix, "seqs": seqs}
                    rows.append({"params": params, "hit": hit, "vram": 10.0})
        st = _study(tmp_path, rows)
        found = {(e.dimension, e.value, e.metric): e for e in effects(st, st.get_trials())}
        prefix = found[("prefix", True, "ttft_hit_ms")]
        assert prefix.measurable
        assert -105 < prefix.delta < -95
        assert not found[("mem", 0.9, "ttft_hit_ms")].measurable
        assert ("prefix", False, "ttft_hit_ms") not in found  # booleans: one row


class TestAdaptiveMeasurement:
    def _objective(self, precision: float | None, only: str | None = None) -> Any:
        """The shipped objective with ``precision`` on every objective, or on ``only``."""
        from tests.conftest import ROOT

        obj = load_objective(ROOT / "objectives" / "agent_multiturn.yaml")
        specs = [
            o.model_copy(update={"precision": precision if only in (None, o.name) else None})
            for o in obj.objectives
        ]
        return obj.model_copy(update={"objectives": specs})

    def test_a_loose_precision_stops_at_the_minimum(self) -> None:
        """+-90 % on HIT: the first 3 conversations are precise enough, measurement stops
        there. On HIT alone, as in the shipped objective: one slow request (a garbage
        collection of the test process, 70 ms against 10) cannot move the median of HIT's 9
        samples, but widens the interval of MISS's 3 past +-90 % (this test failed on 2 runs
        in 3 when precision was on every objective; with the collector off, never)."""
        workload = FAST_WORKLOAD.model_copy(update={"max_conversations": 8})
        enough = precise_enough(self._objective(0.9, only="ttft_hit_ms"))
        assert enough is not None
        with fake_server(["--enable-prefix-caching"]) as srv:
            m = measure(Endpoint(srv.base_url, "fake-model"), workload, enough=enough)
        assert m.stop_reason == "precision"
        assert m.summary()["conversations"] == 3

    def test_an_impossible_precision_stops_at_the_cap(self) -> None:
        """+-0.01 % cannot be reached: measurement goes on to max_conversations and says so."""
        workload = FAST_WORKLOAD.model_copy(update={"max_conversations": 5})
        enough = precise_enough(self._objective(0.0001))
        with fake_server(["--enable-prefix-caching"]) as srv:
            m = measure(Endpoint(srv.base_url, "fake-model"), workload, enough=enough)
        assert m.stop_reason == "max_conversations"
        assert m.summary()["conversations"] == 5

    def test_the_shipped_objective_is_adaptive_on_hit(self) -> None:
        """The default objective file measures HIT to +-5 % (decision_quality.py --precision)."""
        from tests.conftest import ROOT

        obj = load_objective(ROOT / "objectives" / "agent_multiturn.yaml")
        assert [(o.name, o.precision) for o in obj.objectives if o.precision] == [
            ("ttft_hit_ms", 0.05)
        ]
        assert obj.workload.max_conversations == 12

    def test_no_precision_means_a_fixed_count(self) -> None:
        """Without a precision in the objective file there is no adaptive stop."""
        assert precise_enough(self._objective(None)) is None


def test_within_precision_is_the_half_width_against_the_value() -> None:
    """The one test of adaptive measurement and --stop-when-met: half-width <= precision x value;
    an unknown interval (no samples: NaN) or a value of 0 is never precise."""
    assert within_precision(100.0, (96.0, 104.0), 0.05)
    assert not within_precision(100.0, (94.0, 106.0), 0.05)
    assert not within_precision(0.0, (0.0, 0.0), 0.05)
    assert not within_precision(100.0, None, 0.05)
    assert not within_precision(100.0, (math.nan, math.nan), 0.05)
