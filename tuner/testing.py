"""Test helpers for vllm-tuner's tests and for users' own: small fakes built from the library.

Nothing in the library imports this module; it imports the library. The simulated server and
engine themselves live in ``tuner.simulate``, the ``fake`` deployer in ``tuner.deploy.fake``.

Example:
    >>> with fake_server(["--enable-prefix-caching"]) as srv:  # doctest: +SKIP
    ...     measure(Endpoint(srv.base_url, "fake-model"), workload)
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from tuner.config.objective import WorkloadSpec
from tuner.config.profile import FakeConfig, Profile, ServerArgs
from tuner.deploy.fake import FakeDeployer, fake_starts
from tuner.deploy.local import free_port
from tuner.simulate import Clock, ModelEngine, ServerModel, SimulatedServer

__all__ = [
    "FAST_WORKLOAD",
    "interrupting",
    "PostgresUnavailable",
    "fake_profile",
    "fake_server",
    "postgres_server",
    "study_starts",
]

# A workload that measures in a fraction of a second against a simulated server.
FAST_WORKLOAD = WorkloadSpec(
    system_prompt_words=120,
    tools=2,
    turns=3,
    conversations=3,
    warmup_conversations=1,
    user_words=8,
    max_tokens=3,
    request_timeout_s=10,
)


def fake_server(
    flags: Sequence[str] = (),
    *,
    name: str = "fake-model",
    model: ServerModel | None = None,
    fail_chat: bool = False,
    clock: Clock | None = None,
) -> SimulatedServer:
    """A running simulated server whose engine models latency from ``flags``."""
    engine = ModelEngine(flags, model, name=name, fail_chat=fail_chat)
    return SimulatedServer(engine, clock=clock)


def fake_profile(**deployer: object) -> Profile:
    """A ``fake`` deploy profile serving ``fake-model``; keyword arguments go to FakeConfig."""
    return Profile(
        name="fake",
        server=ServerArgs(model="fake-model", max_model_len=4096),
        deployer=FakeConfig.model_validate(deployer),
    )


def study_starts(study_root: Path) -> int:
    """How many servers the ``fake`` deployer started for the study in ``study_root``."""
    return fake_starts(study_root / "trials")


# A throw-away PostgreSQL server on 127.0.0.1 (the scale-out tests): Debian's binaries, a
# fresh data directory, a free port, run as the postgres user when started as root.


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries here (``apt-get install postgresql``), or the server would not
    start."""


def pg_bin() -> Path:
    """The folder of Debian's PostgreSQL server binaries (the newest version installed)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise PostgresUnavailable("no PostgreSQL server binaries (apt-get install postgresql)")


@contextlib.contextmanager
def postgres_server(database: str = "tuner") -> Iterator[str]:
    """Start a server, create ``database``, yield its SQLAlchemy URL; stop and delete it."""
    bindir = pg_bin()
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="tuner-pg-"))
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError as exc:
            raise PostgresUnavailable("running as root and there is no postgres user") from exc
        os.chown(folder, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, log = folder / "data", folder / "server.log"
    port = free_port("127.0.0.1")

    def run(*cmd: str) -> None:
        """Run a PostgreSQL tool as its own user; PostgresUnavailable with its message when it
        fails."""
        done = subprocess.run([*as_user, *cmd], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise PostgresUnavailable(f"{Path(cmd[0]).name} failed: {done.stderr.strip()}")

    started = False
    try:
        run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8")
        opts = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=200"
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", opts, "-w", "start")
        started = True
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
            database)  # fmt: skip
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/{database}"
    finally:
        if started:
            with contextlib.suppress(PostgresUnavailable):
                run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def interrupting(at: int = 1) -> type[FakeDeployer]:
    """A fake deployer class whose ``at``-th server start (counted over all its instances) is
    interrupted as Ctrl-C would, while it starts: for interrupt-and-resume tests."""

    class Interrupting(FakeDeployer):
        starts = 0

        def wait_ready(self) -> float:
            type(self).starts += 1
            if type(self).starts == at:
                raise KeyboardInterrupt
            return super().wait_ready()

    return Interrupting
