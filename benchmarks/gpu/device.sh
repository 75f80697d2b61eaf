#!/usr/bin/env bash
# Runs ON a GPU machine without network access, in the repository root (a copy of the working tree).
#   receive          move the staged part(s) carried in .stage/parts/ to /root/stage (one per call:
#                    a transfer may be limited in size; benchmarks/gpu/stage.py makes them)
#   install          untar, pip-install the wheels the machine lacks, build the test model
#                    (MODEL_ARGS="hidden layers heads kv_heads vocab", default "4096 32 16 8 32000":
#                    the 6.3 B model of the first study; MODEL_DIR, default /root/model6b;
#                    WEIGHTS=dummy: config and tokenizer only, for --load-format dummy)
#   study NAME N [PROFILE [OBJECTIVE [SEEDS]]]
#                    tuner optimize until study NAME holds N deployments (resumes it); defaults:
#                    benchmarks/gpu/h100.yaml, benchmarks/gpu/agent_long.yaml, configs/strategic_12.yaml.
#                    RESUME=DIR starts a fresh machine from a committed study folder (copied once).
#                    EXTRA="..." more `tuner optimize` options (e.g. --no-validate, --validate-top 3)
#   remeasure NAME TRIALS ROUNDS [PROFILE [OBJECTIVE [SPACE]]]
#                    re-deploy trials (e.g. 36,2,10) of study NAME in interleaved validation rounds
#                    on held-out conversations (benchmarks/gpu/remeasure.py); RESUME=DIR as above
#   noise [K [SEED [PROFILE [OBJECTIVE]]]]
#                    tuner noise: SEED (default prefix_only_092) deployed K times (default 3) per
#                    load timing, closed and timetable interleaved, resumable (defaults:
#                    benchmarks/gpu/h100_131k.yaml, benchmarks/gpu/agent_c8.yaml)
#   startup          start-up time, eager vs compiled with a cold and a warm VLLM_CACHE_ROOT
#                    (benchmarks/gpu/startup.py; PROFILE, default benchmarks/gpu/h100_131k.yaml)
#   bytecode         whether a missing Python bytecode cache slows vLLM's start (benchmarks/gpu/bytecode.py)
#   failures         two configurations that must fail for real (invalid flags; GPU memory held)
#   tp-oom           tensor parallel 2: another process holds 100 GB of the second GPU only, then a
#                    server asking 0.95 of both must fail as `oom` (PROFILE, default
#                    benchmarks/gpu/h200x2_tp2.yaml)
# Every step copies every study folder under /root/studies (database, trial folders, reports) to $OUT.
set -u
S=/root/stage
ST=/root/studies
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT" "$ST"
export PYTHONPATH=$PWD VLLM_USE_FLASHINFER_SAMPLER=0
tuner() { python3 -m tuner.cli "$@"; }
collect() {
  for d in "$ST"/*/; do
    s=$(basename "$d")
    [ -e "$d/study.db" ] || continue
    tuner report "$s" --studies-dir "$ST" > "$OUT/report_$s.txt" 2>&1
    tar czf "$OUT/study_$s.tgz" -C "$ST" "$s"
  done
  nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
}
case "${1:-}" in
receive)
  mkdir -p "$S" && mv .stage/parts/part_* "$S"/ && ls -l "$S"
  ;;
install)
  cd "$S" || exit 1
  if [ ! -f .installed ]; then
    cat part_* > all.tar && tar xf all.tar && rm -f all.tar
    t0=$(date +%s)
    python3 - <<'PY' 2>&1 | tail -5
import glob, importlib.metadata as md, re, subprocess, sys
have = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower() for d in md.distributions()}
def name(f): return re.sub(r"[-_.]+", "-", re.split(r"-\d", f.rsplit("/", 1)[-1])[0]).lower()
wheels = [f for f in glob.glob("wh/*.whl") if name(f) not in have]
print(len(wheels), "wheels to install")
sys.exit(subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                         *wheels, glob.glob("vllm-0.25.0-*.whl")[0]]).returncode)
PY
    echo "pip done in $(( $(date +%s) - t0 )) s"; touch .installed
  fi
  cd - > /dev/null
  python3 -c 'import vllm, optuna, torch, pynvml; print("vllm", vllm.__version__, "optuna", optuna.__version__, "torch", torch.__version__)'
  M=${MODEL_DIR:-/root/model6b}
  if [ ! -f "$M/config.json" ]; then
    t0=$(date +%s)
    # shellcheck disable=SC2086  # MODEL_ARGS is a list of numbers
    python3 benchmarks/gpu/make_model.py "$M" ${MODEL_ARGS:-4096 32 16 8 32000} 2>&1 | tail -2
    echo "model built in $(( $(date +%s) - t0 )) s"
  fi
  du -sh "$M"
  ;;
study)
  name=${2:?usage: device.sh study NAME N [PROFILE [OBJECTIVE [SEEDS]]]}
  # A fresh machine resumes a committed study (its database and trial folders) when asked to.
  if [ ! -d "$ST/$name" ] && [ -n "${RESUME:-}" ]; then cp -r "$RESUME" "$ST/$name"; fi
  # SIGTERM before a 600 s session limit: the running trial is stopped and recorded
  # `interrupted`, the server is killed, and the next call resumes the study. Stopping vLLM
  # took up to 61 s and the collection ~20 s: keep BUDGET_S at 500 or less.
  # shellcheck disable=SC2086  # EXTRA is a list of options
  timeout -s TERM "${BUDGET_S:-500}" python3 -m tuner.cli optimize --trials "${3:-40}" --study "$name" \
    --studies-dir "$ST" --profile "${4:-benchmarks/gpu/h100.yaml}" \
    --objective "${5:-benchmarks/gpu/agent_long.yaml}" --seeds "${6:-configs/strategic_12.yaml}" ${EXTRA:-}
  echo "optimize rc=$?"
  collect
  ;;
remeasure)
  name=${2:?usage: device.sh remeasure NAME TRIALS ROUNDS [PROFILE [OBJECTIVE]]}
  if [ ! -d "$ST/$name" ] && [ -n "${RESUME:-}" ]; then cp -r "$RESUME" "$ST/$name"; fi
  timeout -s TERM "${BUDGET_S:-500}" python3 benchmarks/gpu/remeasure.py "$ST" "$name" "${3:?TRIALS}" \
    "${4:-2}" "$(( ${BUDGET_S:-500} - 80 ))" "${5:-benchmarks/gpu/h100.yaml}" "${6:-benchmarks/gpu/agent_long.yaml}" "${7:-search_spaces/seed_192.yaml}"
  echo "remeasure rc=$?"
  collect
  ;;
noise)
  timeout -s TERM "${BUDGET_S:-500}" python3 -m tuner.cli noise --deployments "${2:-3}" \
    --seed "${3:-prefix_only_092}" --studies-dir "$ST" --study gpu-noise \
    --profile "${4:-benchmarks/gpu/h100_131k.yaml}" --objective "${5:-benchmarks/gpu/agent_c8.yaml}" \
    --timeout "$(( ${BUDGET_S:-500} - 150 ))"
  echo "noise rc=$?"
  collect
  ;;
startup)
  timeout -s TERM "${BUDGET_S:-500}" python3 benchmarks/gpu/startup.py \
    "${2:-benchmarks/gpu/h100_131k.yaml}" "$OUT/startup.json" 2>&1 | grep -v "^INFO\|^(EngineCore" | tail -20
  ;;
bytecode)
  timeout -s TERM "${BUDGET_S:-540}" python3 benchmarks/gpu/bytecode.py \
    "${2:-benchmarks/gpu/h100_131k.yaml}" "$OUT/bytecode.json" 2>&1 | grep -v "^INFO\|^(EngineCore" | tail -20
  ;;
failures)
  # Another process holds ~60 GB first, as a second model on the same GPU would.
  python3 -c 'import torch, time; x = torch.empty(60 * 2**30, dtype=torch.uint8, device="cuda"); print("holding", flush=True); time.sleep(900)' &
  hog=$!
  sleep 15
  timeout -s TERM 400 python3 -m tuner.cli optimize --trials 2 --study h100-failures --no-precheck \
    --studies-dir "$ST" --profile benchmarks/gpu/h100.yaml --objective benchmarks/gpu/agent_long.yaml \
    --seeds benchmarks/gpu/failure_seeds.yaml
  echo "optimize rc=$?"
  kill $hog; wait $hog 2>/dev/null
  collect
  ;;
tp-oom)
  CUDA_VISIBLE_DEVICES=1 python3 -c 'import torch, time; x = torch.empty(100 * 2**30, dtype=torch.uint8, device="cuda"); print("holding 100 GB of GPU 1", flush=True); time.sleep(900)' &
  hog=$!
  sleep 15
  nvidia-smi --query-gpu=index,memory.used --format=csv
  timeout -s TERM 400 python3 -m tuner.cli optimize --trials 1 --study tp2-oom --no-precheck --no-validate \
    --studies-dir "$ST" --profile "${2:-benchmarks/gpu/h200x2_tp2.yaml}" --objective benchmarks/gpu/agent_tp2.yaml \
    --seeds benchmarks/gpu/tp2_oom_seeds.yaml
  echo "optimize rc=$?"
  kill $hog; wait $hog 2>/dev/null
  collect
  ;;
*) echo "usage: device.sh receive|install|study NAME N [PROFILE [OBJECTIVE [SEEDS]]]|noise [K [SEED]]|remeasure NAME TRIALS ROUNDS|startup|bytecode|failures|tp-oom" >&2; exit 2 ;;
esac
