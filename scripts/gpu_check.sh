#!/usr/bin/env bash
# The GPU check, in two halves:
#   bash scripts/gpu_check.sh pack      HERE, with network: the wheels the GPU image lacks and its installer, in .device/
#   bash scripts/gpu_check.sh run [...] THERE (carry .device; no network needed): install, prepare Shakespeare offline,
#                                       then bench/gpu.py (two runs through the server over MCP, a short demo),
#                                       figures in $OUT/gpu.json when $OUT is set, else bench/gpu.json
# The run half is sized to finish within LIMIT_S (8 minutes) on an H100/H200: install ~15 s, prepare ~10 s, two 30 s
# runs (the first compiles, ~50 s), a demo of two 15 s runs. Options after `run` go to bench/gpu.py.
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT_S=480
shared=${AUTORESEARCH_GPU_SHARED:-../shared/gpu}  # wheels.sh and install.sh (FACTS.md: the project on a GPU)
case "${1:-}" in
pack)
  [ -x .venv/bin/python ] || bash scripts/setup.sh
  bash "$shared/wheels.sh" .device/whl
  cp "$shared/install.sh" .device/install.sh
  echo "packed: $(du -sh .device | cut -f1) in .device; carry it and run: bash scripts/gpu_check.sh run" ;;
run)
  shift
  start=$SECONDS
  [ -x .venv/bin/autoresearch ] || bash .device/install.sh .device/whl
  export AUTORESEARCH_DATASET=shakespeare-bpe8192  # no network there: the offline corpus, not climbmix
  out=${OUT:-bench}/gpu.json
  timeout --kill-after=10 $((LIMIT_S - (SECONDS - start))) .venv/bin/python bench/gpu.py --out "$out" "$@"
  echo "gpu check: $((SECONDS - start)) s in all (limit ${LIMIT_S} s); figures in $out" ;;
*)
  echo "usage: bash scripts/gpu_check.sh pack | run [bench/gpu.py options]" >&2
  exit 2 ;;
esac
