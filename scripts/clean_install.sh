#!/usr/bin/env bash
# A clean install, as a new user gets it: build the sdist and the wheel, install the wheel
# without extras in a fresh virtual environment, then `tuner --help` and a 3-trial fake study
# run from outside the source tree (so only the installed package is used).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
.venv/bin/python -m build --sdist --wheel --outdir "$TMP/dist" . >"$TMP/build.log" 2>&1 ||
  { cat "$TMP/build.log"; exit 1; }
ls "$TMP"/dist/vllm_bayes_tuner-*.tar.gz "$TMP"/dist/vllm_bayes_tuner-*.whl >/dev/null
"${PYTHON:-python3}" -m venv "$TMP/venv"
"$TMP/venv/bin/python" -m pip install -q "$TMP"/dist/vllm_bayes_tuner-*.whl >"$TMP/pip.log" 2>&1 ||
  { cat "$TMP/pip.log"; exit 1; }
cd "$TMP"
"$TMP/venv/bin/tuner" --help >/dev/null
"$TMP/venv/bin/tuner" optimize --trials 3 --study clean --no-validate \
  --profile "$ROOT/configs/profiles/fake.yaml" --space "$ROOT/search_spaces/seed_192.yaml" \
  --seeds "$ROOT/configs/strategic_12.yaml" --objective "$ROOT/objectives/agent_multiturn.yaml" \
  --studies-dir "$TMP/studies" | tail -2
echo "clean install: wheel and sdist built, wheel installed without extras, 3-trial fake study ran"
