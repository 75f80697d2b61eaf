"""Import rules of docs/architecture.md, checked on the source: imports point down the layers.

Every ``import tuner.X`` / ``from tuner.X import`` in the package (module level or inside a
function) is read with ``ast``; a module may import its own unit or a unit of a lower layer,
never one of its own layer (deploy and measure meet only in study) nor above.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

# unit (first component under tuner/) -> layer; higher layers may import lower ones.
LAYERS: dict[str, int] = {
    "errors": 0,
    "types": 0,
    "metrics": 0,
    "answers": 0,
    "config": 1,
    "schema": 1,
    "trial": 1,
    "demo_model": 1,
    "front": 2,
    "simulate": 2,
    "deploy": 3,
    "measure": 3,
    "decide": 3,
    "study": 4,
    "report": 4,
    "cli": 5,
    "testing": 6,  # test helpers: may import anything, nothing in the library imports them
}
# The config models of each seam's kinds, and the one package allowed to ask which it holds:
# everything else asks the kind itself (tuner.deploy's functions, the workload's methods).
KIND_CONFIGS: dict[str, tuple[str, ...]] = {
    "deploy": ("LocalConfig", "ExternalConfig", "DockerConfig", "ComposeConfig", "ReplayConfig",
               "FakeConfig"),
    "measure": ("SyntheticAgentSpec", "TraceSpec"),
}  # fmt: skip


def _unit(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "tuner" or len(parts) < 2:
        return None
    return parts[1]


def _imports(path: Path, package_root: Path) -> list[tuple[int, str]]:
    """(line, imported tuner module) for every import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = path.relative_to(package_root.parent).with_suffix("").parts
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = list(here[: len(here) - node.level])
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
    return [(line, m) for line, m in out if m.startswith("tuner")]


def violations(package_root: Path) -> list[str]:
    """Every import in ``package_root`` (a ``tuner`` folder) that breaks the layer rules."""
    bad: list[str] = []
    for path in sorted(package_root.rglob("*.py")):
        rel = path.relative_to(package_root)
        src = rel.parts[0].removesuffix(".py")
        if src == "__init__":
            continue  # the package's own face re-exports nothing from below it
        if src not in LAYERS:
            bad.append(f"{rel}: unit {src!r} has no layer in the import rules")
            continue
        for line, mod in _imports(path, package_root):
            dst = _unit(mod)
            if dst is None or dst == src:
                continue
            if dst not in LAYERS:
                bad.append(f"{rel}:{line}: imports {mod}, a unit with no layer")
            elif LAYERS[dst] >= LAYERS[src]:
                bad.append(
                    f"{rel}:{line}: {src} (layer {LAYERS[src]}) imports {mod} "
                    f"(layer {LAYERS[dst]}): imports point down the layers"
                )
    return bad


def kind_tests(package_root: Path) -> list[str]:
    """Every ``isinstance`` on a deployer or workload config outside the package of its seam."""
    bad: list[str] = []
    for path in sorted(package_root.rglob("*.py")):
        rel = path.relative_to(package_root)
        unit = rel.parts[0].removesuffix(".py")
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "isinstance"):
                continue
            names = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)} | {
                n.attr for n in ast.walk(node.args[1]) if isinstance(n, ast.Attribute)
            }
            for seam, configs in KIND_CONFIGS.items():
                if unit != seam and names & set(configs):
                    bad.append(f"{rel}:{node.lineno}: asks which {seam} kind it holds")
    return bad


def test_the_package_follows_the_import_rules() -> None:
    """No upward or sideways import anywhere in tuner/."""
    assert violations(ROOT / "tuner") == []


def test_no_kind_is_tested_outside_its_seam() -> None:
    """Nothing outside tuner/deploy/ asks which deployer it holds, nothing outside
    tuner/measure/ which workload: a kind answers for itself."""
    assert kind_tests(ROOT / "tuner") == []


def test_a_planted_kind_test_is_caught(tmp_path: Path) -> None:
    """The check is not vacuous: an isinstance on a deployer config planted in study/ fails it."""
    copy = tmp_path / "tuner"
    shutil.copytree(ROOT / "tuner", copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "study" / "_planted.py").write_text(
        "from tuner.config.profile import DockerConfig\n"
        "def f(p):\n    return isinstance(p.deployer, DockerConfig | None)\n"
    )
    assert kind_tests(copy) == ["study/_planted.py:3: asks which deploy kind it holds"]


@pytest.mark.parametrize(
    ("module", "planted"),
    [
        ("measure/_planted.py", "from tuner.deploy.base import Endpoint\n"),  # sideways
        ("config/_planted.py", "def f():\n    import tuner.study.runner\n"),  # upward, lazy
        ("deploy/_planted.py", "from tuner.testing import fake_profile\n"),  # test code
        ("report/_planted.py", "from ..study import runner\n"),  # sideways, relative
    ],
)
def test_a_planted_upward_import_is_caught(tmp_path: Path, module: str, planted: str) -> None:
    """The check is not vacuous: each kind of forbidden import planted in a copy fails it."""
    copy = tmp_path / "tuner"
    shutil.copytree(ROOT / "tuner", copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / module).write_text(planted)
    found = violations(copy)
    assert len(found) == 1
    assert found[0].startswith(module)


def test_export_surface_and_the_cli_load_no_test_code() -> None:
    """Importing the CLI, every deployer and the surface export never loads tuner.testing."""
    code = (
        "import sys, tuner.cli, tuner.deploy, tuner.report.surface, tuner.simulate; "
        "bad = [m for m in ('tuner.testing', 'pytest') if m in sys.modules]; "
        "print(bad); sys.exit(bool(bad))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
