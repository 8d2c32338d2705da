"""Which distillation method helps, and by how much? Every registered classification
method with its own defaults (kdcore.spec.METHOD_DEFAULTS), on Fashion-MNIST (the
Debian package dataset-fashion-mnist), scored on the official 10,000-image test set.

A fixed teacher (small_cnn_wide, trained once) and a student more than 10x smaller
(small_cnn). For each seed the student is trained from scratch and distilled by each
method with the same data, budget and seed; prints mean +- std over seeds and the
difference to scratch, as a Markdown table (the README's), and writes the raw
figures to --out/kd_methods.json.

    python bench/kd_methods.py [--seeds 0 1 2] [--epochs 10] [--max-samples 10000]

--max-samples caps the students' training pool (train + val) and keeps the whole
official test set when it is >= 10000; the teacher trains on all 60,000 images.
--crd-negatives overrides CRD's 16384 negatives, whose gathers (2 x batch x 16385 x
128 floats per step) are out of reach of a small CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import kdcore  # noqa: E402
from kdcore.spec import METHOD_DEFAULTS  # noqa: E402

METHODS = ["kd", "dkd", "dist", "at", "fitnet", "crd"]


def _train_settings(epochs: int, seed: int) -> dict[str, Any]:
    return {
        "epochs": epochs,
        "batch_size": 128,
        "lr": 0.05,
        "seed": seed,
        "precision": "fp32",  # machines differ in native bf16; compare like with like
    }


def _teacher(dataset: dict, epochs: int, out: Path) -> tuple[Path, dict]:
    """The teacher learns from the whole official training set (60,000 images): the
    setting distillation is for, a strong model and a smaller labelled budget for the
    student. The test set is never used for training."""
    report = kdcore.train(
        {
            "name": "fmnist-teacher",
            "kind": "train",
            "student": {"arch": "small_cnn_wide"},
            "dataset": {**dataset, "max_samples": None},
            "augment": {"crop_padding": 2},
            "training": {**_train_settings(epochs, 100), "lr": 0.1, "warmup_epochs": 1},
        },
        out / "teacher",
    )
    return out / "teacher" / "student.safetensors", report["student"]


def _student(dataset: dict, method: str | None, teacher: Path, args, seed: int, out: Path):
    spec: dict[str, Any] = {
        "name": f"{method or 'scratch'}-{seed}",
        "kind": "train" if method is None else "distill",
        "student": {"arch": "small_cnn"},
        "dataset": dataset,
        "training": _train_settings(args.epochs, seed),
    }
    if args.augment:  # the same for scratch and every method: random crops and flips
        spec["augment"] = {"crop_padding": 2, "hflip": True}
    if method is not None:
        spec["teacher"] = {"arch": "small_cnn_wide", "checkpoint": str(teacher)}
        spec["distillation"] = {"method": method}
        if method == "crd":
            spec["distillation"]["crd_negatives"] = args.crd_negatives
        for item in args.override:  # METHOD.FIELD=VALUE, e.g. dkd.warmup_epochs=3
            target, value = item.split("=", 1)
            target_method, field = target.split(".", 1)
            if target_method == method:
                spec["distillation"][field] = json.loads(value)
    start = time.perf_counter()
    run = kdcore.distill if method else kdcore.train
    report = run(spec, out / spec["name"])
    return report["student"]["accuracy"], time.perf_counter() - start, report


def _row(name: str, accs: list[float], scratch: list[float], seconds: list[float]) -> str:
    mean, std = statistics.mean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0
    gains = [a - s for a, s in zip(accs, scratch, strict=True)]
    gain = statistics.mean(gains)
    gain_std = statistics.stdev(gains) if len(gains) > 1 else 0.0
    vs = "" if name == "scratch" else f"{100 * gain:+.2f} ± {100 * gain_std:.2f}"
    return (
        f"| {name} | {100 * mean:.2f} ± {100 * std:.2f} | {vs} | {statistics.median(seconds):.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--max-samples", type=int, default=10_000)
    parser.add_argument("--crd-negatives", type=int, default=1024)
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument(
        "--augment", action="store_true", help="students train on random crops and flips"
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="METHOD.FIELD=VALUE",
        help="change one method's setting, e.g. dkd.warmup_epochs=3 (default: its defaults)",
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    dataset = {"builtin": "fashion_mnist", "val_fraction": 0.1, "max_samples": args.max_samples}
    out = Path(args.out or tempfile.mkdtemp(prefix="kd_methods_"))
    out.mkdir(parents=True, exist_ok=True)

    if (out / "teacher" / "report.json").exists():  # a rerun reuses its fixed teacher
        teacher_path = out / "teacher" / "student.safetensors"
        teacher = json.loads((out / "teacher" / "report.json").read_text())["student"]
    else:
        teacher_path, teacher = _teacher(dataset, args.teacher_epochs, out)
    print(
        f"teacher small_cnn_wide: {100 * teacher['accuracy']:.2f}%, "
        f"{teacher['parameters']:,} parameters",
        flush=True,
    )
    results: dict[str, dict[str, list[float]]] = {}
    student_params, sizes = 0, {}
    for seed in args.seeds:
        for method in [None, *args.methods]:
            acc, secs, report = _student(dataset, method, teacher_path, args, seed, out)
            student_params, sizes = report["student"]["parameters"], report["dataset"]
            row = results.setdefault(method or "scratch", {"accuracy": [], "seconds": []})
            row["accuracy"].append(acc)
            row["seconds"].append(secs)
            print(
                f"seed {seed} {method or 'scratch'}: {100 * acc:.2f}% in {secs:.0f} s", flush=True
            )

    scratch = results["scratch"]["accuracy"]
    print(
        f"\nFashion-MNIST: {sizes['train']:,} train and {sizes['val']:,} val images, "
        f"{sizes['test']:,} test images (official test set); "
        f"teacher small_cnn_wide {100 * teacher['accuracy']:.2f}% (trained on all 60,000) "
        f"({teacher['parameters']:,} parameters), student small_cnn ({student_params:,}, "
        f"{teacher['parameters'] / student_params:.1f}x fewer); {args.epochs} epochs, "
        f"seeds {args.seeds}, fp32, {'crops and flips' if args.augment else 'no augmentation'}, "
        "each method with its own defaults"
        + (f" (crd_negatives {args.crd_negatives})" if "crd" in args.methods else "")
        + "\n"
    )
    print("| method | test accuracy % (mean ± std) | vs scratch (points) | median s/run |")
    print("|---|---|---|---|")
    for name, row in results.items():
        print(_row(name, row["accuracy"], scratch, row["seconds"]))
    best = max(
        (m for m in results if m != "scratch"),
        key=lambda m: statistics.mean(results[m]["accuracy"]),
    )
    gain = statistics.mean(results[best]["accuracy"]) - statistics.mean(scratch)
    print(f"\nbest: {best}, {100 * gain:+.2f} points over scratch")
    (out / "kd_methods.json").write_text(
        json.dumps(
            {
                "teacher": teacher,
                "args": vars(args),
                "method_defaults": {m: METHOD_DEFAULTS.get(m, {}) for m in args.methods},
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
