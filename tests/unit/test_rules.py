"""Validity rules catch what vLLM would refuse, from the flags alone."""

from __future__ import annotations

import pytest

from tuner.config import parse_flags, violations
from tuner.config.space import SearchSpace


def test_parse_flags() -> None:
    """Values, switches and --k=v forms."""
    assert parse_flags(["--a", "1", "--b", "--c=3"]) == {"--a": "1", "--b": None, "--c": "3"}


@pytest.mark.parametrize(
    ("args", "bad"),
    [
        (
            [
                "--max-model-len",
                "4096",
                "--no-enable-chunked-prefill",
                "--max-num-batched-tokens",
                "2048",
            ],
            True,
        ),
        (
            [
                "--max-model-len",
                "4096",
                "--no-enable-chunked-prefill",
                "--max-num-batched-tokens",
                "4096",
            ],
            False,
        ),
        (
            [
                "--max-model-len",
                "4096",
                "--enable-chunked-prefill",
                "--max-num-batched-tokens",
                "2048",
            ],
            False,
        ),
        (["--max-model-len", "4096", "--no-enable-chunked-prefill"], False),
        (["--max-num-seqs", "128", "--max-num-batched-tokens", "64"], True),
        (["--gpu-memory-utilization", "1.5"], True),
        (["--enable-prefix-caching", "--no-enable-prefix-caching"], True),
    ],
)
def test_rules(args: list[str], bad: bool) -> None:
    """Each rule fires exactly on the combinations vLLM refuses."""
    assert bool(violations(args)) is bad


def test_mission_space_has_72_invalid_points(space: SearchSpace) -> None:
    """With max_model_len 131072, chunked off + a fixed 2K-8K budget is refused: 3*2*4*3 = 72."""
    fixed = ["--max-model-len", "131072"]
    invalid = [p for p in space.points() if violations([*fixed, *space.to_flags(p)])]
    assert len(invalid) == 72
    assert all(p["enable_chunked_prefill"] is False for p in invalid)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ('{"method":"ngram","num_speculative_tokens":4}', True),
        ('{"model":"draft","num_speculative_tokens":4}', True),
        ("ngram", False),
        ('["ngram"]', False),
        ('{"num_speculative_tokens":4}', False),
    ],
)
def test_a_json_flag_must_be_an_object_vllm_can_read(value: str, ok: bool) -> None:
    problems = violations(["--speculative-config", value])
    assert (not problems) == ok, problems
