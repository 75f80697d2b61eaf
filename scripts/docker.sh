#!/usr/bin/env bash
# Docker Engine + docker-compose from Debian, a running dockerd, and the local image the docker
# tests run vLLM-CPU in. Idempotent; needs root (or passwordless sudo). No registry is needed:
# the image is empty (`docker import`) and the containers bind-mount this machine's Python,
# system libraries and the project's .venv read-only.
set -euo pipefail
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker-compose >/dev/null 2>&1; then
  $SUDO apt-get install -y -q docker.io docker-compose >/dev/null 2>&1 ||
    { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q docker.io docker-compose >/dev/null; }
fi
if ! $SUDO docker info >/dev/null 2>&1; then
  # No bridge / iptables on these machines: containers use the host network.
  $SUDO setsid nohup dockerd --bridge=none --iptables=false --ip-masq=false \
    >/tmp/vllm-tuner-dockerd.log 2>&1 < /dev/null &
  for _ in $(seq 1 60); do $SUDO docker info >/dev/null 2>&1 && break; sleep 1; done
fi
$SUDO docker info --format 'Docker Engine {{.ServerVersion}}' 
if ! $SUDO docker image inspect vllm-tuner/host-env:latest >/dev/null 2>&1; then
  tar cf - --files-from /dev/null | $SUDO docker import - vllm-tuner/host-env:latest >/dev/null
fi
