"""Rewrite one service's vLLM flags in the user's compose file, keeping everything else as it was.

ruamel.yaml's round-trip mode keeps comments, key order and quoting; only the flags the search
space manages are removed from the service's ``command`` and the trial's flags appended. The file
is backed up next to itself before the first change and restored byte-for-byte from that backup.
"""

from __future__ import annotations

import io
import re
import shlex
from collections.abc import Collection, Sequence
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.scalarstring import DoubleQuotedScalarString, ScalarString
from ruamel.yaml.util import load_yaml_guess_indent

from tuner.errors import ConfigError

__all__ = ["backup_path", "restore", "rewrite_command", "strip_flags", "write_flags"]

BACKUP_SUFFIX = ".vllm-tuner.bak"


def backup_path(file: Path) -> Path:
    """Where the original of ``file`` is kept while a study rewrites it."""
    return file.with_name(file.name + BACKUP_SUFFIX)


def strip_flags(args: Sequence[str], managed: Collection[str]) -> list[str]:
    """``args`` without the managed flags and their values (``--x v``, ``--x=v`` or ``--x``)."""
    args = [str(a) for a in args]
    return [args[i] for i in _kept_positions(args, managed)]


def _scalar(v: str, quote: bool = False) -> str:
    """A command argument as a compose file should hold it: quoted when YAML would read it as a
    number, or when the user's list quotes everything."""
    # Compose wants strings in a command list: quote what YAML would read as a number, and
    # everything when the user's list is quoted throughout.
    if not quote:
        try:
            float(v)
        except ValueError:
            return v
    quoted: str = DoubleQuotedScalarString(v)
    return quoted


def _number(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def _yaml(text: str) -> YAML:
    """A round-trip YAML instance that writes ``text`` back as it found it: quotes, long lines, and
    the file's own indentation of mappings and lists."""
    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.width = 4096  # never re-wrap the user's long lines
    # Keep the file's own indentation (`command:\n  - a` or `command:\n- a`).
    _, seq_indent, dash_offset = load_yaml_guess_indent(text)
    first_nested_key = re.search(r"^( +)[^\s#-][^:\n]*:", text, re.MULTILINE)
    mapping = len(first_nested_key.group(1)) if first_nested_key else 2
    offset = dash_offset or 0
    y.indent(mapping=mapping, sequence=max(seq_indent or mapping, offset + 2), offset=offset)
    return y


def rewrite_command(
    text: str, service: str, flags: Sequence[str], managed: Collection[str], *, where: str = ""
) -> str:
    """The compose document ``text`` with ``service``'s managed flags replaced by ``flags``."""
    try:
        y = _yaml(text)
        doc = y.load(text)
    except YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}".splitlines()[0], file=where or None) from exc
    services = doc.get("services") if isinstance(doc, CommentedMap) else None
    if not isinstance(services, CommentedMap) or service not in services:
        raise ConfigError(f"no service {service!r} in the compose file", file=where or None)
    svc = services[service]
    cmd = svc.get("command")
    if isinstance(cmd, CommentedSeq):
        kept = strip_flags([str(a) for a in cmd], managed)
        if cmd.anchor.value is not None:
            # Shared through an anchor: give this service its own list, leave the anchor alone
            # (and keep writing it, although this service no longer refers to it).
            cmd.yaml_set_anchor(cmd.anchor.value, always_dump=True)
            svc["command"] = CommentedSeq([_scalar(a) for a in [*kept, *flags]])
        else:
            positions = _kept_positions([str(a) for a in cmd], managed)
            for idx in sorted(set(range(len(cmd))) - set(positions), reverse=True):
                del cmd[idx]
            quote = any(isinstance(a, DoubleQuotedScalarString) and not _number(a) for a in cmd)
            cmd.extend(_scalar(a, quote) for a in flags)
    elif isinstance(cmd, str):
        new = shlex.join([*strip_flags(shlex.split(cmd), managed), *flags])
        svc["command"] = type(cmd)(new) if isinstance(cmd, ScalarString) else new
    elif cmd is None:
        svc["command"] = CommentedSeq([_scalar(a) for a in flags])
    else:
        raise ConfigError(
            f"service {service!r}: command must be a list or a string", file=where or None
        )
    buf = io.StringIO()
    y.dump(doc, buf)
    return buf.getvalue()


def _kept_positions(args: list[str], managed: Collection[str]) -> list[int]:
    """Indexes of ``args`` that :func:`strip_flags` keeps."""
    keep: list[int] = []
    i = 0
    while i < len(args):
        name = args[i].split("=", 1)[0]
        if name in managed:
            has_value = (
                "=" not in args[i] and i + 1 < len(args) and not args[i + 1].startswith("--")
            )
            i += 2 if has_value else 1
            continue
        keep.append(i)
        i += 1
    return keep


def write_flags(
    file: Path, service: str, flags: Sequence[str], managed: Collection[str], note: str = ""
) -> None:
    """Back the file up (once) and write it with ``flags``; ``note`` becomes a top comment."""
    backup = backup_path(file)
    if not backup.exists():
        backup.write_bytes(file.read_bytes())
    original = backup.read_text()
    text = rewrite_command(original, service, flags, managed, where=str(file))
    if note:
        text = "".join(f"# {line}\n" for line in note.splitlines()) + text
    file.write_text(text)


def restore(file: Path) -> bool:
    """Put the original back byte-for-byte from the backup; False when there is no backup."""
    backup = backup_path(file)
    if not backup.exists():
        return False
    file.write_bytes(backup.read_bytes())
    backup.unlink()
    return True
