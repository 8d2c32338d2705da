#!/usr/bin/env bash
# GPU throughput of the KD training loop (see bench/gpu_throughput.py).
#   bench/gpu.sh            on a CUDA machine (an H200 run takes under 5 minutes)
#   bench/gpu.sh --smoke    a few steps on the CPU (the test suite runs this)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$(pwd)"
exec "$PY" bench/gpu_throughput.py "$@"
