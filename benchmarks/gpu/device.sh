#!/usr/bin/env bash
# Runs ON the lent GPU machine, in the repository root (the device tool copies the working tree there).
#   receive          move the staged parts carried in .stage/ to /root/stage
#   install          untar, pip-install the wheels the machine lacks, build the 6.3 B test model
#   study N          tuner optimize over the mission's space until the study holds N deployments
#   failures         two configurations that must fail for real (invalid flags; GPU memory held)
# Every step copies the study folders (database, trial folders, reports) to $OUT.
set -u
S=/root/stage
ST=/root/studies
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT" "$ST"
export PYTHONPATH=$PWD VLLM_USE_FLASHINFER_SAMPLER=0
tuner() { python3 -m tuner.cli "$@"; }
collect() {
  for s in h100 h100-failures; do
    [ -d "$ST/$s" ] || continue
    tuner report "$s" --studies-dir "$ST" > "$OUT/report_$s.txt" 2>&1
    tar czf "$OUT/study_$s.tgz" -C "$ST" "$s"
  done
  nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
}
case "${1:-}" in
receive)
  mkdir -p "$S" && mv .stage/part_* "$S"/ && ls -l "$S"
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
  if [ ! -f /root/model6b/config.json ]; then
    t0=$(date +%s)
    python3 benchmarks/gpu/make_model.py /root/model6b 4096 32 2>&1 | tail -2
    echo "model built in $(( $(date +%s) - t0 )) s"
  fi
  du -sh /root/model6b
  ;;
study)
  # A fresh machine resumes the committed study (its database and trial folders).
  [ -d "$ST/h100" ] || cp -r benchmarks/results/gpu/h100 "$ST/"
  # SIGTERM before the device tool's 600 s limit: the running trial is stopped and recorded
  # `interrupted`, the server is killed, and the next call resumes the study.
  timeout -s TERM "${BUDGET_S:-500}" python3 -m tuner.cli optimize --trials "${2:-40}" --study h100 \
    --studies-dir "$ST" --profile benchmarks/gpu/h100.yaml --objective benchmarks/gpu/agent_long.yaml
  echo "optimize rc=$?"
  collect
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
*) echo "usage: device.sh receive|install|study N|failures" >&2; exit 2 ;;
esac
