"""A real headless Chromium opens report.html and the running optuna-dashboard.

Checks that plots rendered (plotly's SVG elements in the live DOM) and that the page logged no
JavaScript error; keeps screenshots in the test's folder.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import FAST_WORKLOAD, ROOT, fake_profile
from tuner.config import load_objective, load_seeds, load_space
from tuner.report import write_report
from tuner.study import RunSettings, StudyPaths, StudyRunner, load_study

pytestmark = pytest.mark.browser

CHROMIUM = (
    shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
)
# Chromium prints console messages as `INFO:CONSOLE:N] "text", source: ...` with --enable-logging.
_CONSOLE = re.compile(r'CONSOLE[^\]]*\] "(?P<msg>.*)", source:')


@pytest.fixture(scope="module")
def chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail(
                "CI must run the browser tests: install Debian's chromium (scripts/setup.sh)"
            )
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    return CHROMIUM


def _chromium(
    binary: str, url: str, profile: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1400,1000",
            "--virtual-time-budget=15000",
            *extra,
            url,
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def render(binary: str, url: str, tmp: Path, shot: Path) -> tuple[str, list[str]]:
    """(live DOM after scripts ran, JavaScript errors) and a screenshot at ``shot``."""
    dom = _chromium(binary, url, tmp / "profile-dom", "--dump-dom")
    _chromium(binary, url, tmp / "profile-shot", f"--screenshot={shot}")
    messages = [m.group("msg") for m in _CONSOLE.finditer(dom.stderr)]
    errors = [m for m in messages if re.search(r"Uncaught|Error", m)]
    return dom.stdout, errors


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    space = load_space(ROOT / "search_spaces" / "seed_192.yaml")
    objective = load_objective(ROOT / "objectives" / "agent_multiturn.yaml")
    StudyRunner(
        paths=StudyPaths.create("b", root),
        space=space,
        seeds=load_seeds(ROOT / "configs" / "strategic_12.yaml", space),
        objective=objective.model_copy(update={"workload": FAST_WORKLOAD}),
        profile=fake_profile(oom_when=[{"--max-num-seqs": "128"}], crash_retries=0),
        settings=RunSettings(n_trials=14, sampler_seed=5),
    ).run()
    return root


def test_detects_javascript_errors(chromium: str, tmp_path: Path) -> None:
    """The check itself can fail: a page throwing an error is reported."""
    page = tmp_path / "bad.html"
    page.write_text("<html><body><script>notDefinedAnywhere()</script></body></html>")
    _, errors = render(chromium, page.as_uri(), tmp_path, tmp_path / "bad.png")
    assert any("notDefinedAnywhere" in e for e in errors)


def test_report_html_renders_plots(chromium: str, study_dir: Path, tmp_path: Path) -> None:
    """report.html opened from disk (offline): every plot drew its SVG, no JS error."""
    st = load_study(StudyPaths.create("b", study_dir))
    files = write_report(st, study_dir / "b")
    shot = tmp_path / "report.png"
    dom, errors = render(chromium, files["report_html"].as_uri(), tmp_path, shot)
    assert errors == []
    plots = dom.count('js-plotly-plot"')
    assert plots >= 4, f"{plots} plots rendered"
    assert dom.count('class="main-svg"') >= plots  # plotly draws at least one SVG per plot
    assert "scatterlayer" in dom
    assert "Lines to paste" in dom
    assert shot.stat().st_size > 20_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_dashboard_serves_the_study(chromium: str, study_dir: Path, tmp_path: Path) -> None:
    """`tuner dashboard` binds 127.0.0.1, shows the study and its trials' user attributes."""
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tuner.cli",
            "dashboard",
            "b",
            "--studies-dir",
            str(study_dir),
            "--port",
            str(port),
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/dashboard", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "dashboard did not come up in 60 s"
            time.sleep(0.5)
        dom, errors = render(chromium, f"{base}/dashboard/studies/1", tmp_path, tmp_path / "d.png")
        assert errors == []
        assert "b (id=1)" in dom or ">b<" in dom
        assert dom.count('class="main-svg"') >= 1  # the history / Pareto plots rendered
        trials_dom, errors = render(
            chromium, f"{base}/dashboard/studies/1/trials", tmp_path, tmp_path / "trials.png"
        )
        assert errors == []
        # the trial page lists the tuner's user attributes (first trial: the baseline seed)
        for attr in ("hit_rate_hit", "startup_s", "seed_name", "baseline_reference"):
            assert attr in trials_dom
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
