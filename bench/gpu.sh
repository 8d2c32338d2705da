#!/usr/bin/env bash
# GPU throughput of the KD training loop (see bench/gpu_throughput.py).
#   bench/gpu.sh            on a CUDA machine (an H200 run takes under 5 minutes)
#   bench/gpu.sh --smoke    a few steps on the CPU (the test suite runs this)
# On a CUDA machine it then runs bench/peer_compare.py --device cuda: kdcore beside
# torchdistill on the GPU, and bench/data_throughput.py --device cuda: the streaming
# loader beside the set in GPU memory, and bench/lm_kd.py --device cuda: language-model
# KD (live teacher, top-k cache, gradient checkpointing), and bench/lm_sharding.py --device
# cuda: distillation.sharding fsdp over NCCL (one GPU per rank: it says so and measures
# nothing where fewer than 2 GPUs are present; the CPU runs it over gloo), and
# bench/multi_node.py --device cuda: one job as 2 nodes (two torchrun agents, NCCL) beside
# one host with 2 ranks (needs >= 2 GPUs, like the sharding bench). The peer's virtualenv
# (.bench/torchdistill) is made from PyPI on first use; a machine without an index needs
# it carried over (it is small: it uses this environment's torch).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$(pwd)"
"$PY" bench/gpu_throughput.py "$@"
case " $* " in
  *" --smoke "*) "$PY" bench/lm_kd.py --smoke
                 "$PY" bench/lm_sharding.py --smoke
                 "$PY" bench/multi_node.py --smoke ;;
  *) "$PY" bench/peer_compare.py --device cuda --no-levers
     "$PY" bench/data_throughput.py --device cuda
     "$PY" bench/lm_kd.py --device cuda
     "$PY" bench/lm_sharding.py --device cuda
     "$PY" bench/multi_node.py --device cuda ;;
esac
