"""Two jobs on one host: do they oversubscribe its cores?

    python bench/concurrent_jobs.py [--epochs 3]

Runs the same distillation (cifar_resnet20 -> small_cnn on digits at 32x32, crops, fp32)
as training processes the way the service starts them (`python -m worker.training_process`
with the threads `worker.supervisor.threads_per_job` gives): one job alone on a local
executor with one slot, then two at once on a local executor with two slots (each gets
the cores / 2). For comparison it also runs two at once with every core each, which is
what a process does when nobody sets its threads. Prints the images/s of each case
(the sum over the concurrent jobs, each job's median of epochs 2..N) and the ratios to
one job alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def spec(epochs: int) -> dict:
    return {
        "name": "concurrency",
        "kind": "distill",
        "teacher": {"arch": "cifar_resnet20"},
        "student": {"arch": "small_cnn"},
        "dataset": {"builtin": "digits", "image_size": 32, "val_fraction": 0.1},
        "augment": {"crop_padding": 2},
        "distillation": {"method": "kd"},
        "training": {"epochs": epochs, "batch_size": 64, "precision": "fp32"},
        "export": ["safetensors"],
    }


def start(job: dict, out: Path, threads: int) -> subprocess.Popen:
    """A training process as worker.supervisor.Supervisor starts one."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.training_process"],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": str(threads)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None
    payload = {"spec": job, "out_dir": str(out), "resume_from": None, "threads": threads}
    proc.stdin.write(json.dumps(payload).encode())
    proc.stdin.close()
    return proc


def rate(proc: subprocess.Popen) -> float:
    """The job's median images/s over its epochs but the first (from its epoch events)."""
    assert proc.stdout is not None
    epochs = []
    for line in proc.stdout:
        message = json.loads(line)
        if message["type"] == "epoch":
            epochs.append(message["metrics"]["images_per_s"])
        elif message["type"] == "error":
            raise SystemExit(f"a job failed: {message['message']}")
    proc.wait()
    return statistics.median(epochs[1:] or epochs)


def together(n: int, threads: int, epochs: int, tmp: Path) -> float:
    procs = [start(spec(epochs), tmp / f"job{n}-{threads}-{i}", threads) for i in range(n)]
    return sum(rate(p) for p in procs)


def main() -> None:
    from app.settings import Settings
    from worker.supervisor import threads_per_job

    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    one_slot = threads_per_job(Settings(local_workers=1, job_threads=0, broker_url=""))
    two_slots = threads_per_job(Settings(local_workers=2, job_threads=0, broker_url=""))
    with tempfile.TemporaryDirectory() as tmp:
        alone = together(1, one_slot, args.epochs, Path(tmp))
        split = together(2, two_slots, args.epochs, Path(tmp))
        crowded = together(2, one_slot, args.epochs, Path(tmp))
    print(f"{'case':<52}{'images/s':>10}{'vs alone':>10}")
    print(f"{f'one job, {one_slot} threads':<52}{alone:>10.1f}")
    print(
        f"{f'two jobs at once, {two_slots} thread(s) each (the service)':<52}{split:>10.1f}"
        f"{split / alone:>9.2f}x"
    )
    print(
        f"{f'two jobs at once, {one_slot} threads each (unset)':<52}{crowded:>10.1f}"
        f"{crowded / alone:>9.2f}x"
    )


if __name__ == "__main__":
    main()
