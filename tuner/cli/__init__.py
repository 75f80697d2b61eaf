"""Command line: thin wrappers over the library, one module per group of commands.

A TunerError or a usage error is one line and exit status 2 (``--debug`` shows the traceback);
Ctrl-C and SIGTERM exit 130 after clean-up.
"""

from __future__ import annotations

import logging
import sys
import threading

import optuna
import typer

from tuner.cli import noise, optimize, report, soak, spaces, tools, workers  # noqa: F401  (registers the commands)
from tuner.cli._common import app, err
from tuner.errors import TunerError

__all__ = ["app", "main"]


def _root_cause(exc: BaseException) -> str:
    """The first line of the innermost cause (SQLite's "database or disk is full")."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _quiet_storage_threads(args: threading.ExceptHookArgs) -> None:
    """Optuna's heartbeat thread dies with a traceback when the storage refuses a write; the
    main thread says it in one line."""
    if isinstance(args.exc_value, optuna.exceptions.StorageInternalError):
        return
    threading.__excepthook__(args)


def main() -> None:
    """Entry point of the ``tuner`` command."""
    threading.excepthook = _quiet_storage_threads
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    debug = "--debug" in sys.argv[1:]
    if debug:
        sys.argv.remove("--debug")
    try:
        # Typer turns KeyboardInterrupt into a returned 130 when not in standalone mode.
        rv = app(standalone_mode=False)
        if rv == 130:
            raise KeyboardInterrupt
        sys.exit(rv if isinstance(rv, int) else 0)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        err.print(
            "interrupted: the server was stopped; finished trials are kept and the study resumes "
            "with the same command"
        )
        sys.exit(130)
    except typer.TyperException as exc:
        # Typer vendors click: its usage errors (bad value, unknown option) end up here.
        if debug:
            raise
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        err.print(f"error: {message} (see tuner --help)", markup=False, highlight=False)
        sys.exit(2)
    except TunerError as exc:
        if debug:
            raise
        err.print(f"error: {exc}", markup=False, highlight=False)
        sys.exit(2)
    except optuna.exceptions.StorageInternalError as exc:
        if debug:
            raise
        # The storage refused a write (a full disk under SQLite): its own words, one line.
        said = f"the study's storage refused a write: {_root_cause(exc)}"
        err.print(f"error: {said}; finished trials are kept, the study resumes with the same "
                  "command", markup=False)  # fmt: skip
        sys.exit(2)
    except OSError as exc:
        if debug:
            raise
        # The machine's: a full disk, a read-only or missing folder. One line, exit 2 as for
        # every usage and environment error; nothing lost (trials are committed as they end).
        err.print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), markup=False)
        sys.exit(2)
