"""The `tuner` command as a user runs it: output, one-line errors, SIGTERM clean-up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import optuna
import psutil
import pytest
from optuna.trial import TrialState

from tests.conftest import ROOT

TUNER = [sys.executable, "-m", "tuner.cli"]
FAKE = ROOT / "configs" / "profiles" / "fake.yaml"


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TUNER, *args], capture_output=True, text=True, timeout=300, cwd=cwd, check=False
    )


def test_space_prints_192() -> None:
    """`tuner space` shows the dimensions and the number of points."""
    r = run("space")
    assert r.returncode == 0
    assert "192 points" in r.stdout
    assert "--no-enable-prefix-caching" in r.stdout


def test_seeds_lists_twelve() -> None:
    """`tuner seeds` lists the 12 strategic configs (11 distinct points)."""
    r = run("seeds")
    assert r.returncode == 0
    assert "12 seeds (11 distinct points)" in r.stdout


def test_bad_yaml_is_one_line(tmp_path: Path) -> None:
    """A config error is one line naming file, line and key, exit status 2, no traceback."""
    bad = tmp_path / "p.yaml"
    bad.write_text("name: x\nserver:\n  model: m\n  tensor_parallel: 2\n")
    r = run("optimize", "--profile", str(bad), "--studies-dir", str(tmp_path))
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: {bad}:4: server.tensor_parallel: unknown key"


def test_a_read_only_studies_folder_is_one_line_exit_2(tmp_path: Path) -> None:
    """The machine's fault, as a full disk is: one line naming the folder, exit 2. Read-only
    by a bind mount (CI runs as root, which writes through file permissions)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    mount = subprocess.run(["mount", "--bind", "-o", "ro", str(ro), str(ro)],
                           capture_output=True, check=False)  # fmt: skip
    if mount.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"CI must be able to bind-mount read-only: {mount.stderr!r}")
        pytest.skip("cannot bind-mount read-only here (needs root)")
    try:
        r = run("optimize", "--trials", "1", "--profile", str(ROOT / "configs/profiles/fake.yaml"),
                "--studies-dir", str(ro))  # fmt: skip
    finally:
        subprocess.run(["umount", str(ro)], check=False)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip() == f"error: Read-only file system: {ro}/fake-seed_192"


def test_a_full_disk_is_one_line_and_the_study_resumes(tmp_path: Path) -> None:
    """A real full disk (a 400 KiB tmpfs): SQLite refuses a write; one line with its words,
    exit 2, no traceback from the heartbeat thread; with room again, the same command
    resumes and finishes."""
    full = tmp_path / "full"
    full.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(full)],
                           capture_output=True, check=False)  # fmt: skip
    if mount.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"CI must be able to mount a tmpfs: {mount.stderr!r}")
        pytest.skip("cannot mount a tmpfs here (needs root)")
    args = ("optimize", "--trials", "3", "--no-validate", "--profile",
            str(ROOT / "configs/profiles/fake.yaml"), "--studies-dir", str(full))  # fmt: skip
    try:
        r = run(*args)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "Traceback" not in r.stderr
        assert r.stderr.strip().startswith("error: the study's storage refused a write: ")
        assert "database or disk is full" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        subprocess.run(["mount", "-o", "remount,size=50m", str(full)], check=True)
        again = run(*args)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "3 deployments" in again.stdout
    finally:
        subprocess.run(["umount", str(full)], check=False)


def test_report_of_missing_study(tmp_path: Path) -> None:
    """Reporting a study that does not exist is a clear error."""
    r = run("report", "nope", "--studies-dir", str(tmp_path))
    assert r.returncode == 2
    assert "no study 'nope'" in r.stderr


def test_fake_study_then_report(tmp_path: Path) -> None:
    """A fake-deployer study end to end, then the report files with units."""
    r = run(
        "optimize",
        "--trials",
        "3",
        "--study",
        "f",
        "--profile",
        str(ROOT / "configs/profiles/fake.yaml"),
        "--studies-dir",
        str(tmp_path),
    )
    assert r.returncode == 0, r.stderr
    assert "3 deployments" in r.stdout
    assert "baseline_reference" in r.stdout
    rep = run("report", "f", "--studies-dir", str(tmp_path))
    assert rep.returncode == 0, rep.stderr
    doc = json.loads((tmp_path / "f" / "pareto.json").read_text())
    assert [o["unit"] for o in doc["objectives"]] == ["ms", "ms", "MiB"]
    assert (tmp_path / "f" / "trials.csv").read_text().count("\n") == 4


def test_sigterm_stops_server_and_keeps_study(tmp_path: Path) -> None:
    """SIGTERM mid-trial: exit 130 with one line, no server process left, trial `interrupted`,
    earlier trials intact, and the same command resumes."""
    profile = tmp_path / "p.yaml"
    profile.write_text(
        'name: slow\nserver: {model: fake-model, max_model_len: 4096, extra_args: [--fake-startup-s, "3"]}\n'
        "deployer: {kind: local, module: tuner.simulate, health_timeout_s: 60}\n"
    )
    seeds = tmp_path / "s.yaml"
    row = (
        "{{gpu_memory_utilization: 0.9, enable_prefix_caching: true, enable_chunked_prefill: true, "
        "max_num_seqs: {seqs}, max_num_batched_tokens: null}}"
    )
    seeds.write_text(
        f"seeds:\n  - name: a\n    params: {row.format(seqs='null')}\n"
        f"  - name: b\n    params: {row.format(seqs=32)}\n"
    )
    args = [
        "optimize",
        "--trials",
        "2",
        "--study",
        "x",
        "--profile",
        str(profile),
        "--seeds",
        str(seeds),
        "--studies-dir",
        str(tmp_path),
    ]
    proc = subprocess.Popen(
        [*TUNER, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    db = f"sqlite:///{tmp_path / 'x' / 'study.db'}"
    deadline = time.monotonic() + 120
    children: list[psutil.Process] = []
    while time.monotonic() < deadline:  # wait until the second trial's server is up
        children = psutil.Process(proc.pid).children(recursive=True)
        if (tmp_path / "x" / "trials" / "0001" / "command.json").exists() and children:
            break
        time.sleep(0.2)
    assert children, "the second trial never started"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert err.strip().startswith("interrupted:")
    assert len(err.strip().splitlines()) == 1
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    trials = optuna.load_study(study_name="x", storage=db).trials
    assert trials[0].state == TrialState.COMPLETE
    assert trials[1].state == TrialState.FAIL
    assert trials[1].user_attrs["reason"] == "interrupted"
    again = run(*args)
    assert again.returncode == 0, again.stderr
    assert "2 deployments" in again.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["optimize", "--trials", "0"], "Invalid value for '--trials'"),
        (["optimize", "--trials", "abc"], "Invalid value for '--trials'"),
        (["optimize", "--bogus"], "No such option: --bogus"),
        (["optimize", "--study", "", "--no-validate"], "study name ''"),
        (["report", "x", "--storage", "bogus://user:hunter2@host/db"], "cannot open storage"),
        (["report", "x", "--storage", "sqlite:////nonexistent/x.db"], "no study 'x'"),
        (
            ["optimize", "--stop-when-met", "--workers", "2", "--profile", str(FAKE)],
            "--stop-when-met runs with --workers 1",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    """Usage errors, bad values and bad storage URLs: one line on stderr, exit 2, no
    traceback, no password echoed."""
    r = run(*args, "--studies-dir", str(tmp_path))
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ")
    assert message in lines[0]
    assert "hunter2" not in r.stderr


def test_stop_when_met_without_a_precision_is_refused(tmp_path: Path) -> None:
    """Nothing could say "measured well enough to stop": one line, exit 2, nothing deployed."""
    shipped = (ROOT / "objectives" / "agent_multiturn.yaml").read_text()
    (tmp_path / "o.yaml").write_text(shipped.replace("precision: 0.05, ", ""))
    r = run(
        "optimize", "--stop-when-met", "--study", "g", "--profile", str(FAKE),
        "--objective", str(tmp_path / "o.yaml"), "--studies-dir", str(tmp_path),
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ")
    assert "--stop-when-met needs a `precision`" in lines[0]
    assert not (tmp_path / "g" / "trials").exists()


def test_bad_sampler_leaves_no_folder(tmp_path: Path) -> None:
    """An unknown --sampler is refused before the study folder is created."""
    r = run(
        "optimize", "--sampler", "bogus", "--study", "s", "--trials", "1", "--no-validate",
        "--profile", str(ROOT / "configs/profiles/fake.yaml"), "--studies-dir", str(tmp_path),
    )  # fmt: skip
    assert r.returncode == 2
    assert "unknown sampler 'bogus'" in r.stderr
    assert not (tmp_path / "s").exists()


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    """--debug: the same error with its traceback, for a bug report."""
    r = run("--debug", "report", "nope", "--studies-dir", str(tmp_path))
    assert r.returncode != 0
    assert "Traceback" in r.stderr


def test_second_process_on_one_study_refuses(tmp_path: Path) -> None:
    """Two `tuner optimize` on one study: the second refuses with one line (exit 2) and the
    first finishes untouched, with exactly its deployments."""
    (tmp_path / "p.yaml").write_text(
        "name: slow\nserver: {model: fake-model}\ndeployer: {kind: fake, startup_s: 2}\n"
    )
    args = ["optimize", "--trials", "2", "--study", "one", "--no-validate",
            "--profile", str(tmp_path / "p.yaml"), "--studies-dir", str(tmp_path)]  # fmt: skip
    first = subprocess.Popen(
        [*TUNER, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        lock = tmp_path / "one" / ".lock"
        deadline = time.monotonic() + 60
        while not (lock.exists() and "pid" in lock.read_text()):
            assert time.monotonic() < deadline, "the first run never took the study"
            time.sleep(0.1)
        second = run(*args)
        assert second.returncode == 2
        lines = [line for line in second.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, second.stderr
        assert f"is being run by pid {first.pid}" in lines[0]
        out, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 0, err
    assert "2 deployments" in out
    study = optuna.load_study(
        study_name="one", storage=f"sqlite:///{tmp_path / 'one' / 'study.db'}"
    )
    ran = [t.state for t in study.trials if t.state != TrialState.WAITING]  # seeds still queued
    assert ran == [TrialState.COMPLETE] * 2


def test_kill_9_then_cleanup_leaves_no_orphan(tmp_path: Path) -> None:
    """kill -9 of `tuner optimize` while its local server starts: the server survives (own
    session), its record names it; `tuner cleanup` stops it after the identity check."""
    (tmp_path / "p.yaml").write_text(
        "name: local\nserver: {model: fake-model, extra_args: [--fake-startup-s, '2']}\n"
        "deployer: {kind: local, module: tuner.simulate, health_timeout_s: 60}\n"
    )
    args = ["optimize", "--trials", "1", "--study", "k", "--no-validate",
            "--profile", str(tmp_path / "p.yaml"), "--studies-dir", str(tmp_path)]  # fmt: skip
    tuner = subprocess.Popen([*TUNER, *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
    record = tmp_path / "k" / "trials" / "0000" / "process.json"
    deadline = time.monotonic() + 60
    while not record.exists():
        assert time.monotonic() < deadline, "the server never started"
        time.sleep(0.05)
    server = json.loads(record.read_text())["pid"]
    tuner.send_signal(signal.SIGKILL)
    tuner.wait(timeout=10)
    assert psutil.pid_exists(server)
    r = run("cleanup", "--study", "k", "--studies-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert f"server pid {server} of 0000" in r.stdout
    deadline = time.monotonic() + 20
    while psutil.pid_exists(server) and psutil.Process(server).status() != "zombie":
        assert time.monotonic() < deadline, "the orphan is still running"
        time.sleep(0.1)
    assert not record.exists()


def test_soak_reports_drift_windows(tmp_path: Path) -> None:
    """`optimize --soak 2s` after a fake study: the pick is kept under the workload window after
    window, the verdict printed, stored with the study and shown in report.md; a bad duration
    is one line and exit 2."""
    fake = str(ROOT / "configs/profiles/fake.yaml")
    r = run("optimize", "--trials", "2", "--study", "sk", "--profile", fake, "--no-validate",
            "--soak", "2s", "--studies-dir", str(tmp_path))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "soak: trial" in r.stdout
    assert "window 1 at" in r.stdout  # at least two windows in 2 s on the fake
    st = optuna.load_study(study_name="sk", storage=f"sqlite:///{tmp_path / 'sk' / 'study.db'}")
    soak = st.user_attrs["soak"]
    assert len(soak["windows"]) >= 2
    assert soak["seconds"] >= 2.0
    lo, hi = soak["drift_interval"]
    assert lo <= soak["drift_ms"] <= hi
    rep = run("report", "sk", "--studies-dir", str(tmp_path))
    assert rep.returncode == 0, rep.stderr
    assert "## Soak" in (tmp_path / "sk" / "report.md").read_text()
    bad = run("soak", "sk", "--duration", "ten", "--studies-dir", str(tmp_path))
    assert bad.returncode == 2
    assert "a duration like 90s" in bad.stderr


def test_kill_9_of_the_server_mid_measurement(tmp_path: Path) -> None:
    """The server is killed (SIGKILL) while the workload runs: that trial fails (`oom`: a
    SIGKILL is what the kernel's OOM killer sends), the study goes on to the next trial, and
    nothing is left running."""
    (tmp_path / "p.yaml").write_text(
        "name: local\nserver: {model: fake-model, max_model_len: 4096}\n"
        "deployer: {kind: local, module: tuner.simulate, health_timeout_s: 60}\n"
    )
    (tmp_path / "o.yaml").write_text(
        "name: long\nobjectives: [{name: ttft_hit_ms}]\ncriteria: null\n"
        "workload: {system_prompt_words: 300, tools: 1, turns: 4, conversations: 60,"
        " max_tokens: 50}\n"
    )
    args = ["optimize", "--trials", "2", "--study", "ks", "--no-validate", "--objective",
            str(tmp_path / "o.yaml"), "--profile", str(tmp_path / "p.yaml"),
            "--studies-dir", str(tmp_path)]  # fmt: skip
    tuner = subprocess.Popen([*TUNER, *args], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)  # fmt: skip
    trial = tmp_path / "ks" / "trials" / "0000"

    def serving() -> bool:  # the workload's requests have reached the server
        if not (trial / "process.json").exists() or not (trial / "command.json").exists():
            return False
        argv = json.loads((trial / "command.json").read_text())["argv"]
        port = argv[argv.index("--port") + 1]
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        except httpx.HTTPError:
            return False
        return "vllm:prefix_cache_queries_total" in text and " 0.0\n" not in text.split(
            "vllm:prefix_cache_queries_total", 1)[1][:80]  # fmt: skip

    try:
        deadline = time.monotonic() + 60
        while not serving():
            assert time.monotonic() < deadline, "the workload never started"
            time.sleep(0.05)
        os.kill(json.loads((trial / "process.json").read_text())["pid"], signal.SIGKILL)
    except BaseException:
        tuner.kill()
        tuner.communicate()
        raise
    out, _ = tuner.communicate(timeout=240)
    assert tuner.returncode == 0, out
    st = optuna.load_study(study_name="ks", storage=f"sqlite:///{tmp_path / 'ks' / 'study.db'}")
    first, second = st.trials[0], st.trials[1]
    assert first.state == TrialState.FAIL
    assert first.user_attrs["reason"] == "oom"
    assert second.state == TrialState.COMPLETE
    assert not [p for p in psutil.process_iter(["cmdline"])
                if "tuner.simulate" in " ".join(p.info["cmdline"] or [])
                and str(tmp_path) in " ".join(p.info["cmdline"] or [])]  # fmt: skip


INTERRUPTED = """
import asyncio, gc
from tuner.measure._run import run_interruptible

async def request():
    await asyncio.sleep(0.05)
    raise KeyboardInterrupt  # what sigterm_as_interrupt raises in whatever frame runs

async def load():
    await asyncio.gather(request(), asyncio.sleep(10))

try:
    run_interruptible(load())
except KeyboardInterrupt:
    gc.collect()  # the failed task is collected: asyncio would report it now
    print("interrupted")
"""


def test_an_interrupt_inside_a_request_prints_nothing_more() -> None:
    """SIGTERM / Ctrl-C landing inside one of the concurrent requests' tasks reaches the caller
    as KeyboardInterrupt, and asyncio prints no "Task exception was never retrieved" traceback
    beside the tuner's one line."""
    r = subprocess.run(
        [sys.executable, "-c", INTERRUPTED], cwd=ROOT, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert r.stdout == "interrupted\n", r.stderr
    assert r.stderr == ""
