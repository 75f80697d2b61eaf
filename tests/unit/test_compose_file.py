"""Rewriting one service's vLLM flags in a user's compose file, and putting it back."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from tuner.config import load_space
from tuner.deploy.compose_file import (
    backup_path,
    restore,
    rewrite_command,
    strip_flags,
    write_flags,
)
from tuner.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
MANAGED = load_space(ROOT / "search_spaces" / "seed_192.yaml").managed_flags
TRIAL = ["--gpu-memory-utilization", "0.9", "--no-enable-prefix-caching", "--max-num-seqs", "128"]


def _command(text: str, service: str) -> object:
    return YAML(typ="safe").load(text)["services"][service]["command"]


def test_managed_flags_cover_both_boolean_forms() -> None:
    assert {"--enable-prefix-caching", "--no-enable-prefix-caching", "--max-num-seqs"} <= MANAGED
    assert "--model" not in MANAGED


@pytest.mark.parametrize(
    ("args", "kept"),
    [
        (["--model", "m", "--max-num-seqs", "64"], ["--model", "m"]),
        (["--max-num-seqs=64", "--model", "m"], ["--model", "m"]),
        (["--enable-prefix-caching", "--model", "m"], ["--model", "m"]),
        (["--model", "m", "--no-enable-chunked-prefill"], ["--model", "m"]),
        (["--tensor-parallel-size", "2"], ["--tensor-parallel-size", "2"]),
    ],
)
def test_strip_flags(args: list[str], kept: list[str]) -> None:
    assert strip_flags(args, MANAGED) == kept


LIST = """\
# production service
services:
  vllm:   # the model server
    image: vllm/vllm-openai:latest
    command:
      - "--model"
      - 'Qwen/Qwen3-32B-AWQ'   # quantised
      - "--gpu-memory-utilization"
      - "0.95"
      - "--enable-prefix-caching"
      - "--tensor-parallel-size"
      - "2"
  proxy:
    image: nginx
"""


def test_list_command_keeps_comments_quotes_and_other_flags() -> None:
    out = rewrite_command(LIST, "vllm", TRIAL, MANAGED)
    assert _command(out, "vllm") == [
        "--model",
        "Qwen/Qwen3-32B-AWQ",
        "--tensor-parallel-size",
        "2",
        *TRIAL,
    ]
    assert "# production service" in out
    assert "vllm:   # the model server" in out
    assert "'Qwen/Qwen3-32B-AWQ'   # quantised" in out
    assert '      - "0.9"' in out  # numbers stay quoted strings, list indentation kept
    assert out.count("nginx") == 1
    # only the command lines differ
    removed = set(LIST.splitlines()) - set(out.splitlines())
    assert removed == {'      - "0.95"', '      - "--enable-prefix-caching"'}


def test_string_command() -> None:
    text = 'services:\n  vllm:\n    command: "--model m --max-num-seqs 32 --port 8000"\n'
    out = rewrite_command(text, "vllm", TRIAL, MANAGED)
    assert _command(out, "vllm") == "--model m --port 8000 " + " ".join(TRIAL)
    assert 'command: "--model m' in out  # still double-quoted


def test_entrypoint_plus_command_only_touches_command() -> None:
    text = (
        "services:\n  vllm:\n"
        '    entrypoint: ["python3", "-m", "vllm.entrypoints.openai.api_server"]\n'
        "    command: [--model, m, --max-num-batched-tokens, '4096']\n"
    )
    out = rewrite_command(text, "vllm", TRIAL, MANAGED)
    doc = YAML(typ="safe").load(out)["services"]["vllm"]
    assert doc["entrypoint"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert doc["command"] == ["--model", "m", *TRIAL]


def test_no_command_gets_one() -> None:
    out = rewrite_command("services:\n  vllm:\n    image: x\n", "vllm", TRIAL, MANAGED)
    assert _command(out, "vllm") == TRIAL


ANCHORS = """\
x-vllm-args: &args
  - --model
  - m
  - --max-num-seqs
  - "64"
services:
  a:
    command: *args
  b:
    command: *args
"""


def test_anchor_shared_by_services_is_left_alone() -> None:
    """Only the tuned service changes; the anchor and the other service keep the old flags."""
    out = rewrite_command(ANCHORS, "a", TRIAL, MANAGED)
    doc = YAML(typ="safe").load(out)
    assert doc["services"]["a"]["command"] == ["--model", "m", *TRIAL]
    assert doc["services"]["b"]["command"] == ["--model", "m", "--max-num-seqs", "64"]
    assert doc["x-vllm-args"] == ["--model", "m", "--max-num-seqs", "64"]
    assert "&args" in out


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("services:\n  other: {image: x}\n", "no service 'vllm'"),
        ("services: [\n", "invalid YAML"),
        ("services:\n  vllm:\n    command: 3\n", "list or a string"),
    ],
)
def test_errors_name_the_file(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as exc:
        rewrite_command(text, "vllm", TRIAL, MANAGED, where="compose.yml")
    assert str(exc.value).startswith("compose.yml")


def test_write_then_restore_is_byte_for_byte(tmp_path: Path) -> None:
    """Backup once, several trials rewrite from the original, restore gives the exact bytes."""
    f = tmp_path / "docker-compose.yml"
    original = LIST.replace("\n", "\r\n").encode()  # CRLF and all
    f.write_bytes(original)
    write_flags(f, "vllm", TRIAL, MANAGED)
    write_flags(f, "vllm", ["--max-num-seqs", "32"], MANAGED, note="kept: trial 3")
    assert f.read_text().startswith("# kept: trial 3\n")
    # rewritten from the original, not from the previous trial's file
    assert "--no-enable-prefix-caching" not in f.read_text()
    assert '"Qwen/Qwen3-32B-AWQ"' not in f.read_text()  # the original single quotes are kept
    assert backup_path(f).read_bytes() == original
    assert restore(f)
    assert hashlib.sha256(f.read_bytes()).digest() == hashlib.sha256(original).digest()
    assert not backup_path(f).exists()
    assert not restore(f)  # nothing left to restore
