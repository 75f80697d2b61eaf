"""The stored schema and the metric table: one definition each, read back the same way."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tuner.config import load_objective
from tuner.errors import ConfigError, StudyError
from tuner.metrics import METRICS, Observations, metric
from tuner.schema import SCHEMA_VERSION, MeasurementsDoc, RequestRecord, TrialFolder

H100 = ROOT / "benchmarks" / "results" / "gpu" / "h100"


class TestMeasurementsDoc:
    def test_files_written_before_the_version_read_as_version_1(self) -> None:
        """The committed H100 study's measurements.json (no schema_version) loads as is."""
        doc = TrialFolder.of(H100, 36).read_measurements()
        assert doc.schema_version == 1
        assert doc.trial == 36
        assert len(doc.ttft("hit")) == 9
        assert doc.cache_config["kv_cache_size_tokens"] == "243408"

    def test_round_trip(self, tmp_path: Path) -> None:
        """What the runner writes is what every reader gets back, with the current version."""
        rec = RequestRecord(0, 1, "hit", 12.5, 40.0, 300, 8, 100.0, 300.0, 280.0, 10.0)
        doc = MeasurementsDoc(
            trial=3, params={"a": 1}, flags=["--x"], startup_s=1.5, summary={}, samples=[rec]
        )
        folder = TrialFolder.of(tmp_path, 3)
        folder.write_measurements(doc)
        assert json.loads(folder.measurements.read_text())["schema_version"] == SCHEMA_VERSION
        assert folder.read_measurements() == doc
        assert folder.path == tmp_path / "trials" / "0003"

    def test_newer_or_broken_files_are_one_clear_error(self, tmp_path: Path) -> None:
        """A file from a newer tuner, or one missing a field, names the file and the problem."""
        folder = TrialFolder.of(tmp_path, 0)
        folder.path.mkdir(parents=True)
        folder.measurements.write_text(json.dumps({"schema_version": SCHEMA_VERSION + 1}))
        with pytest.raises(StudyError, match="upgrade vllm-bayes-tuner"):
            folder.read_measurements()
        folder.measurements.write_text(json.dumps({"trial": 0}))
        with pytest.raises(StudyError, match=r"measurements\.json: params: Field required"):
            folder.read_measurements()


class TestMetricTable:
    def test_statistics_of_a_known_sample(self) -> None:
        """Each metric reduces its own series with its own statistic."""
        obs = Observations(
            series={"ttft_hit_ms": [10.0, 20.0, 30.0, 40.0, 100.0], "ttft_miss_ms": [5.0]},
            scalars={"vram_mib": 1000.0, "startup_s": None},
        )
        assert METRICS["ttft_hit_ms"].compute(obs) == 30.0
        assert METRICS["ttft_hit_p90_ms"].compute(obs) == pytest.approx(76.0)
        assert METRICS["ttft_miss_ms"].compute(obs) == 5.0
        assert METRICS["vram_mib"].compute(obs) == 1000.0
        assert math.isnan(METRICS["startup_s"].compute(obs))  # not measured: NaN, not 0
        assert math.isnan(METRICS["ttft_miss_p90_ms"].compute(Observations()))

    def test_unknown_metric_named(self) -> None:
        with pytest.raises(KeyError, match="unknown metric 'ttft'; known: ttft_hit_ms"):
            metric("ttft")

    def test_objective_file_takes_direction_and_unit_from_the_table(self, tmp_path: Path) -> None:
        """An objective names a metric; its direction and unit default to the table's, and an
        unknown name is a config error with file, line and key."""
        f = tmp_path / "o.yaml"
        f.write_text("name: o\nobjectives:\n  - {name: speedup}\n  - {name: ttft_hit_p90_ms}\n")
        obj = load_objective(f)
        assert [(o.direction, o.unit) for o in obj.objectives] == [
            ("maximize", "x"),
            ("minimize", "ms"),
        ]
        f.write_text("name: o\nobjectives:\n  - {name: speedup}\n  - {name: ttft_p99}\n")
        with pytest.raises(ConfigError, match=r"o\.yaml:4: objectives\.1\.name: .*ttft_p99"):
            load_objective(f)
