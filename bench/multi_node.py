"""One job across hosts (resources.nodes): the multi-node path beside one host.

The same training runs three ways, each through the code the service runs:
  1 rank               kdcore.run in one process
  1 host x 2 ranks     kdcore.run with resources.gpus 2 (kdcore.runs.distributed)
  2 nodes x 1 rank     two torchrun agents (torch.distributed.run, c10d rendezvous) on
                       this machine's loopback, each starting its rank through
                       worker.node_process, as worker.gang does on two hosts
Printed: the median of the training images/s over the repeats, each as a ratio to one
rank, and the final training loss (the two 2-rank setups see the same global batches:
it should agree). With --device cuda each rank has its own GPU and the collectives are
NCCL (two agents on one machine still talk over loopback and shared memory: this
measures the multi-node path's own cost, not a network); on the CPU, gloo.

  python bench/multi_node.py --smoke           a few steps on the CPU (the suite runs it)
  python bench/multi_node.py                   the CPU figures (gloo)
  python bench/multi_node.py --device cuda     NCCL, one GPU per rank (needs >= 2 GPUs)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = {  # samples, image side, epochs, batch per rank, repeats
    "smoke": (256, 16, 1, 16, 1),
    "cpu": (4096, 32, 2, 64, 3),
    "cuda": (50000, 32, 2, 256, 3),
}


def spec_for(size: str, device: str, **resources: int) -> dict[str, Any]:
    samples, side, epochs, batch, _ = SIZES[size]
    return {
        "name": "multi-node-bench",
        "kind": "train",
        "student": {"arch": "cifar_resnet8" if size == "smoke" else "resnet18"},
        "dataset": {
            "builtin": "synthetic",
            "num_samples": samples,
            "num_classes": 10,
            "shape": [3, side, side],
            "val_fraction": 0.0,
        },
        "training": {
            "epochs": epochs,
            "batch_size": batch,
            "device": device,
            "precision": "fp32",
            "seed": 0,
            "select": "last",
        },
        "export": [],
        "resources": {"gpus": 1, "nodes": 1, **resources},
    }


def one_host(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    import kdcore

    return kdcore.run(spec, out)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def two_agents(spec: dict[str, Any], out: Path, threads: int) -> dict[str, Any]:
    """Two torchrun agents on loopback, one rank each: what two hosts of worker.gang
    run; global rank 0's `done` message carries the report."""
    port = _port()
    agents = []
    for node in range(2):
        payload = {
            "spec": spec,
            "out_dir": str(out),
            "resume_from": None,
            "threads": threads,
            "teacher_cache": None,
            "node_rank": node,
            "host": "127.0.0.1",
            "collective_timeout_s": 600,
        }
        payload_file = out / f"node{node}.json"
        payload_file.write_text(json.dumps(payload))
        conf = f"is_host={'true' if node == 0 else 'false'}"
        argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2"]
        argv += ["--nproc-per-node=1", "--rdzv-backend=c10d"]
        argv += [f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=bench", f"--rdzv-conf={conf}"]
        argv += ["--local-addr=127.0.0.1", "--max-restarts=0"]
        argv += ["-m", "worker.node_process", "rank", str(payload_file)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
        if spec["training"]["device"] == "cuda":
            env["CUDA_VISIBLE_DEVICES"] = str(node)  # each agent's rank has its own GPU
        agents.append(
            subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        )
    report = None
    for agent in agents:
        stdout, _ = agent.communicate(timeout=3600)
        for line in stdout.decode().splitlines():
            message = json.loads(line) if line.startswith("{") else {}
            if message.get("type") == "done":
                report = message["report"]
            elif message.get("type") == "error":
                raise RuntimeError(message["message"])
    assert report is not None, "rank 0 sent no report"
    return report


def measure(size: str, device: str) -> list[tuple[str, float, float]]:
    repeats = SIZES[size][4]
    threads = max(1, torch.get_num_threads() // 2)  # two ranks share this machine's cores
    setups = {
        "1 rank": lambda out: one_host(spec_for(size, device), out),
        "1 host x 2 ranks": lambda out: one_host(spec_for(size, device, gpus=2), out),
        "2 nodes x 1 rank": lambda out: two_agents(spec_for(size, device, nodes=2), out, threads),
    }
    rows = []
    for name, run in setups.items():
        rates, loss = [], 0.0
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as tmp:
                report = run(Path(tmp))
            rates.append(float(report["train_images_per_s"]))
            loss = float(report["history"][-1]["train_losses"]["loss"])
        rows.append((name, statistics.median(rates), loss))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.device == "cuda" and torch.cuda.device_count() < 2:
        print(f"multi-node bench: {torch.cuda.device_count()} GPU(s) here; it needs 2")
        return 0
    size = "smoke" if args.smoke else args.device
    rows = measure(size, args.device)
    base = rows[0][1]
    print(f"multi-node bench ({args.device}, {size}): median training images/s")
    print(f"{'setup':<20} {'images/s':>10} {'x 1 rank':>9} {'last loss':>10}")
    for name, rate, loss in rows:
        print(f"{name:<20} {rate:>10.1f} {rate / base:>9.2f} {loss:>10.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
