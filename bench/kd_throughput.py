"""KD training throughput on the CPU: cifar_resnet56 -> cifar_resnet20, digits at 32x32,
batch 64, KD loss T=4. Runs the real training loop (kdcore.image.trainer.fit) and prints the
median images/s over epochs (evaluation excluded) for:

  (a) the KD step (teacher forward + student forward/backward),
  (b) the student alone (plain supervised training, the upper bound),
  (c) KD with the cached teacher (teacher outputs computed once),

each in fp32 and in the default precision (`auto`: bf16 autocast where the CPU has
native bf16), side by side, with ratios. The comparison with a peer framework, measured
beside ours in the same run, is bench/peer_compare.py.

    python bench/kd_throughput.py [--epochs 4]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from kdcore.checks.validate import parse_spec
from kdcore.engine.precision import uses_bf16
from kdcore.image.data import load_dataset
from kdcore.image.trainer import fit
from kdcore.models import build_model


def spec(kind: str, precision: str, cache: bool, epochs: int):
    s = {
        "kind": kind,
        "student": {"arch": "cifar_resnet20"},
        "dataset": {"builtin": "digits", "image_size": 32, "val_fraction": 0.1},
        "distillation": {
            "method": "kd",
            "temperature": 4.0,
            "ce_weight": 0.1,
            "kd_weight": 0.9,
            "cache_teacher": cache,
        },
        "training": {"epochs": epochs, "batch_size": 64, "lr": 0.05, "precision": precision},
    }
    if kind == "distill":
        s["teacher"] = {"arch": "cifar_resnet56"}
    return parse_spec(s)


def measure(kind: str, precision: str, cache: bool, epochs: int) -> float:
    job = spec(kind, precision, cache, epochs)
    data = load_dataset(job.dataset, 0)
    torch.manual_seed(0)
    student = build_model("cifar_resnet20", 10, data.input_shape)
    teacher = build_model("cifar_resnet56", 10, data.input_shape) if kind == "distill" else None
    result = fit(job, data, student, teacher, torch.device("cpu"), None)
    rates = [h["images_per_s"] for h in result.history[1:]]  # epoch 1 warms up oneDNN
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    cpu = torch.device("cpu")
    auto = "bf16" if uses_bf16(cpu, "auto") else "fp32"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, auto precision = {auto}")
    rows = [
        ("(a) KD step", "distill", False),
        ("(b) student alone", "train", False),
        ("(c) KD, cached teacher", "distill", True),
    ]
    results: dict[tuple[str, str], float] = {}
    for precision in ("fp32", "auto"):
        for label, kind, cache in rows:
            results[(label, precision)] = measure(kind, precision, cache, args.epochs)
    print(f"\n{'configuration':<26}{'fp32 img/s':>12}{'auto img/s':>12}{'auto/fp32':>11}")
    for label, _, _ in rows:
        fp32, best = results[(label, "fp32")], results[(label, "auto")]
        print(f"{label:<26}{fp32:>12.1f}{best:>12.1f}{best / fp32:>11.2f}")
    a, b, c = (results[(label, "auto")] for label, _, _ in rows)
    print(f"\nKD step / student alone: {a / b:.2f}   cached KD / KD step: {c / a:.2f}")


if __name__ == "__main__":
    main()
