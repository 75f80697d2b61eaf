"""YAML loading with line numbers, and pydantic validation that names file, line and key."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from tuner.errors import ConfigError

__all__ = ["StrictModel", "line_of", "load_model", "load_yaml", "plain"]

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def load_yaml(path: Path) -> Any:
    """Parse ``path`` with ruamel's round-trip loader so nodes keep their line numbers."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", file=path) from None
    except UnicodeDecodeError as exc:
        # Where the undecodable byte sits, as a line the user can open the file at.
        at = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"not UTF-8: byte 0x{exc.object[exc.start]:02x} at offset {exc.start} "
            "(save the file as UTF-8)",
            file=path,
            line=at,
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=path) from exc
    try:
        return YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(
            f"invalid YAML: {exc.problem or exc.context}", file=path, line=line
        ) from None
    except YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file=path) from None


def plain(node: Any) -> Any:
    """Convert ruamel nodes to plain dict/list/scalars (pydantic then sees ordinary types)."""
    if isinstance(node, dict):
        return {str(k): plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [plain(v) for v in node]
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    return node


def line_of(node: Any, loc: Sequence[int | str]) -> int | None:
    """Best line (1-based) for a pydantic error location inside a round-trip YAML tree."""
    line: int | None = None
    for part in loc:
        if isinstance(node, CommentedMap):
            if part not in node:
                continue  # pydantic adds union tags that are not YAML keys
            line = node.lc.key(part)[0] + 1
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
            line = node.lc.item(part)[0] + 1
            node = node[part]
        else:
            break
    return line


def load_model(path: Path, model: type[M], data: Any = None) -> M:
    """Load ``path`` (or already-parsed ``data``) into ``model``; errors become ConfigError."""
    tree = load_yaml(path) if data is None else data
    if tree is None:
        raise ConfigError("file is empty", file=path)
    try:
        return model.model_validate(plain(tree))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc = (*loc, "kind")  # point at the discriminator, not at the whole section
        key = ".".join(str(p) for p in loc) or None
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        raise ConfigError(msg, file=path, line=line_of(tree, loc), key=key) from None
