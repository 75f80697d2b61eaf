"""Config files: the shipped ones load; bad ones fail with file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ROOT
from tuner.config import load_objective, load_profile, load_seeds, load_space
from tuner.config.space import SearchSpace
from tuner.errors import ConfigError


class TestShippedFiles:
    def test_seed_192_has_192_points(self, space: SearchSpace) -> None:
        """The mission's grid is 3 x 2 x 2 x 4 x 4."""
        assert space.size == 192
        assert len(list(space.points())) == 192
        assert len({space.key(p) for p in space.points()}) == 192

    def test_booleans_map_to_explicit_flags_both_ways(self, space: SearchSpace) -> None:
        """vLLM V1 enables prefix caching and chunked prefill by default: off must be explicit."""
        p = {
            "gpu_memory_utilization": 0.9,
            "enable_prefix_caching": False,
            "enable_chunked_prefill": True,
            "max_num_seqs": None,
            "max_num_batched_tokens": 4096,
        }
        flags = space.to_flags(p)
        assert flags == [
            "--gpu-memory-utilization",
            "0.9",
            "--no-enable-prefix-caching",
            "--enable-chunked-prefill",
            "--max-num-batched-tokens",
            "4096",
        ]

    def test_twelve_seeds_eleven_points(self, space: SearchSpace) -> None:
        """After the mission's correction two seeds became the same point."""
        seeds = load_seeds(ROOT / "configs" / "strategic_12.yaml", space)
        assert [s.name for s in seeds][:2] == ["baseline_reference", "prefix_only_095"]
        assert len(seeds) == 12
        assert len({space.key(s.params) for s in seeds}) == 11
        corrected = {s.name: s.params["max_num_batched_tokens"] for s in seeds}
        for name in (
            "chunked_only_high_tokens",
            "combined_optimized_high_tokens",
            "combined_conservative",
            "chunked_low_memory",
            "combined_balanced",
        ):
            assert corrected[name] is None

    @pytest.mark.parametrize("name", ["tiny_cpu", "qwen3_32b_awq_tp2", "fake"])
    def test_profiles_load(self, name: str) -> None:
        """Every shipped profile validates."""
        prof = load_profile(ROOT / "configs" / "profiles" / f"{name}.yaml")
        assert prof.server.to_args()[:2] == ["--model", prof.server.model]

    def test_objective_loads(self) -> None:
        """The default objective minimises HIT, MISS and VRAM with the mission's criteria."""
        obj = load_objective(ROOT / "objectives" / "agent_multiturn.yaml")
        assert [o.name for o in obj.objectives] == ["ttft_hit_ms", "ttft_miss_ms", "vram_mib"]
        assert obj.criteria is not None
        assert (
            obj.criteria.miss_max_ratio,
            obj.criteria.hit_max_ratio,
            obj.criteria.min_speedup,
        ) == (1.2, 0.7, 1.5)


class TestErrors:
    def _write(self, tmp_path: Path, text: str) -> Path:
        p = tmp_path / "f.yaml"
        p.write_text(text)
        return p

    def test_unknown_key_names_file_line_key(self, tmp_path: Path) -> None:
        """A typo in a nested key is reported with its line."""
        p = self._write(tmp_path, "name: x\nserver:\n  model: m\n  max_modle_len: 10\n")
        with pytest.raises(ConfigError) as exc:
            load_profile(p)
        assert str(exc.value) == f"{p}:4: server.max_modle_len: unknown key"

    def test_bad_yaml_names_line(self, tmp_path: Path) -> None:
        """Broken YAML gives the line of the problem."""
        p = self._write(tmp_path, "name: x\nserver: [\n")
        with pytest.raises(ConfigError, match=r"f\.yaml:3: invalid YAML"):
            load_profile(p)

    @pytest.mark.parametrize(
        ("content", "line", "byte"),
        [(b"name: caf\xe9\n", 1, "0xe9"), (b"name: x\nserver:\n  model: \xff\xfe\n", 3, "0xff")],
    )
    def test_not_utf8_names_file_line_and_byte(
        self, tmp_path: Path, content: bytes, line: int, byte: str
    ) -> None:
        """A Latin-1 or binary file is one line naming where the first bad byte is."""
        p = tmp_path / "f.yaml"
        p.write_bytes(content)
        with pytest.raises(ConfigError) as exc:
            load_profile(p)
        assert str(exc.value).startswith(f"{p}:{line}: not UTF-8: byte {byte}")
        assert "\n" not in str(exc.value)

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing file is one line, not a traceback."""
        with pytest.raises(ConfigError, match="file not found"):
            load_space(tmp_path / "nope.yaml")

    def test_unknown_deployer_kind(self, tmp_path: Path) -> None:
        """The deployer kind is a closed set."""
        p = self._write(tmp_path, "name: x\nserver: {model: m}\ndeployer:\n  kind: kubernetes\n")
        with pytest.raises(ConfigError, match=r":4: deployer.kind: Input tag .kubernetes."):
            load_profile(p)

    def test_boolean_dimension_needs_negative_flag(self, tmp_path: Path) -> None:
        """A boolean without its --no- flag could not turn a V1 default off."""
        p = self._write(
            tmp_path,
            "name: s\ndimensions:\n  pc:\n    values: [false, true]\n"
            "    flag: --enable-prefix-caching\n",
        )
        with pytest.raises(ConfigError, match="negative_flag"):
            load_space(p)

    def test_seed_value_outside_space(self, tmp_path: Path, space: SearchSpace) -> None:
        """A seed value the space does not hold names the seed's line and key."""
        p = self._write(
            tmp_path,
            "seeds:\n  - name: a\n    params: {gpu_memory_utilization: 0.5, "
            "enable_prefix_caching: true, enable_chunked_prefill: true, "
            "max_num_seqs: null, max_num_batched_tokens: null}\n",
        )
        with pytest.raises(ConfigError) as exc:
            load_seeds(p, space)
        assert exc.value.line == 3
        assert exc.value.key == "seeds.0.params.gpu_memory_utilization"

    def test_duplicate_seed_name(self, tmp_path: Path, space: SearchSpace) -> None:
        """Seed names identify trials; they must be unique."""
        row = (
            "    params: {gpu_memory_utilization: 0.9, enable_prefix_caching: true, "
            "enable_chunked_prefill: true, max_num_seqs: null, max_num_batched_tokens: null}\n"
        )
        p = self._write(tmp_path, f"seeds:\n  - name: a\n{row}  - name: a\n{row}")
        with pytest.raises(ConfigError, match="duplicate seed name"):
            load_seeds(p, space)

    def test_boolean_is_not_integer(self, space: SearchSpace) -> None:
        """True must not pass for 1 (Python's bool is an int)."""
        p = dict(next(space.points()))
        p["max_num_seqs"] = True
        with pytest.raises(ConfigError, match="max_num_seqs"):
            space.check(p)
