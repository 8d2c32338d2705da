"""Does distillation help? Fashion-MNIST (the Debian package dataset-fashion-mnist),
a teacher and a student more than 10x smaller. Trains the teacher once, then for each
seed distils the student and trains it from scratch with the same data, budget and
seed (kdcore's `baseline: true`). Prints teacher accuracy, student from scratch, student
with KD (mean and spread over seeds), parameters and CPU latency.

    python bench/kd_quality.py [--seeds 0 1 2] [--teacher-epochs 6] [--epochs 6]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import kdcore

DATASET = {"builtin": "fashion_mnist", "val_fraction": 0.1}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--teacher-epochs", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--max-samples", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    dataset = {**DATASET, **({"max_samples": args.max_samples} if args.max_samples else {})}
    out = Path(args.out or tempfile.mkdtemp(prefix="kd_quality_"))

    teacher_report = kdcore.train(
        {
            "name": "fmnist-teacher",
            "kind": "train",
            "student": {"arch": "small_cnn_wide"},
            "dataset": dataset,
            "augment": {"crop_padding": 2},
            "training": {
                "epochs": args.teacher_epochs,
                "batch_size": 128,
                "lr": 0.1,
                "warmup_epochs": 1,
                "seed": 100,
            },
        },
        out / "teacher",
    )
    teacher = teacher_report["student"]
    print(
        f"teacher small_cnn_wide: accuracy {teacher['accuracy']:.4f}, "
        f"{teacher['parameters']} parameters",
        flush=True,
    )

    kd, scratch, reports = [], [], []
    for seed in args.seeds:
        report = kdcore.distill(
            {
                "name": f"fmnist-kd-seed{seed}",
                "kind": "distill",
                "teacher": {
                    "arch": "small_cnn_wide",
                    "checkpoint": str(out / "teacher" / "student.safetensors"),
                },
                "student": {"arch": "small_cnn"},
                "dataset": dataset,
                "distillation": {
                    "method": "kd",
                    "temperature": 4.0,
                    "ce_weight": 0.5,
                    "kd_weight": 0.5,
                },
                "training": {
                    "epochs": args.epochs,
                    "batch_size": 128,
                    "lr": 0.1,
                    "warmup_epochs": 1,
                    "seed": seed,
                },
                "baseline": True,
            },
            out / f"kd-seed{seed}",
        )
        kd.append(report["student"]["accuracy"])
        scratch.append(report["baseline"]["accuracy"])
        reports.append(report)
        print(
            f"seed {seed}: KD {kd[-1]:.4f}  scratch {scratch[-1]:.4f}  "
            f"gain {report['kd_gain']:+.4f}",
            flush=True,
        )

    r = reports[0]
    s = r["student"]

    def spread(xs: list[float]) -> str:
        sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
        return f"{statistics.mean(xs):.4f} ± {sd:.4f}"

    print("\n| model | params | accuracy (test, 10k) | CPU latency b1 / b64 (ms) |")
    print("|---|---|---|---|")
    print(
        f"| teacher small_cnn_wide | {teacher['parameters']:,} | {teacher['accuracy']:.4f} "
        f"| {teacher['latency_ms_batch1']:.3f} / {teacher['latency_ms_batch64']:.2f} |"
    )
    print(
        f"| student small_cnn, scratch | {s['parameters']:,} | {spread(scratch)} "
        f"| {s['latency_ms_batch1']:.3f} / {s['latency_ms_batch64']:.2f} |"
    )
    print(f"| student small_cnn, KD | {s['parameters']:,} | {spread(kd)} | same |")
    gains = [k - b for k, b in zip(kd, scratch, strict=True)]
    print(
        f"\ncompression {r['compression_ratio']:.1f}x, speed-up b64 {r['speedup_batch64']:.2f}x,"
        f" mean KD gain {statistics.mean(gains):+.4f} over {len(gains)} seeds"
    )
    (out / "summary.json").write_text(
        json.dumps({"kd": kd, "scratch": scratch, "teacher": teacher}, indent=2)
    )
    print(f"reports in {out}")


if __name__ == "__main__":
    main()
