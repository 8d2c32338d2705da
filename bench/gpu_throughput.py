"""GPU training throughput of the real training loop (kdcore.image.trainer.fit), for
cifar_resnet56 -> cifar_resnet20 and cifar_resnet32x4 -> cifar_resnet8x4 at 32x32,
batch 512 (CIFAR-100 shapes, synthetic data resident on the GPU). For each pair it
prints the median images/s over epochs (the first epoch warms up cuDNN and is dropped)
for the student alone, KD, and KD with the cached teacher; the KD overhead ratio
(KD / student alone); achieved TFLOP/s (FLOPs of one step counted by
torch.utils.flop_counter, times steps/s) and its fraction of the device's dense bf16
peak; and the peak GPU memory of each run.

    bench/gpu.sh                 # the H200 run (under 5 minutes)
    bench/gpu.sh --smoke         # a few steps on the CPU: the code path, in CI
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from kdcore.checks.validate import parse_spec
from kdcore.engine.precision import autocast_for
from kdcore.image.data import load_dataset
from kdcore.image.trainer import fit
from kdcore.losses import build_loss
from kdcore.models import build_model, count_parameters

PAIRS = [("cifar_resnet56", "cifar_resnet20"), ("cifar_resnet32x4", "cifar_resnet8x4")]
# dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets
BF16_PEAK = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.05, "A10": 125.0}


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in BF16_PEAK.items() if k in name), None)


def job_spec(kind: str, pair: tuple[str, str], cache: bool, args: argparse.Namespace) -> Any:
    spec: dict[str, Any] = {
        "kind": kind,
        "student": {"arch": pair[1]},
        "dataset": {
            "builtin": "synthetic",
            "num_samples": args.samples,
            "num_classes": 100,
            "shape": [3, args.size, args.size],
            "val_fraction": 0.02,
            "test_fraction": 0.02,
        },
        "distillation": {"method": "kd", "temperature": 4.0, "cache_teacher": cache},
        "training": {
            "epochs": args.epochs,
            "batch_size": args.batch,
            "lr": 0.05,
            "precision": args.precision,
            "device": args.device,
            "compile": args.compile,
            "eval_batch_size": 1024,
        },
    }
    if kind == "distill":
        spec["teacher"] = {"arch": pair[0]}
    return parse_spec(spec)


def step_flops(spec: Any, student: torch.nn.Module, teacher: Any, x: torch.Tensor) -> int:
    """FLOPs of one training step: student forward + backward, teacher forward (none
    when its outputs are cached)."""
    loss_fn = build_loss(spec.distillation).to(x.device) if teacher is not None else None
    y = torch.zeros(len(x), dtype=torch.long, device=x.device)
    with FlopCounterMode(display=False) as counter:
        with autocast_for(x.device, spec.training.precision):
            out = student(x)
            if teacher is not None and loss_fn is not None:
                with torch.no_grad():
                    t_out = teacher(x)
                loss = loss_fn(out, t_out, y, [], [])["loss"]
            else:
                loss = torch.nn.functional.cross_entropy(out, y)
        loss.backward()
    student.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def measure(kind: str, pair: tuple[str, str], cache: bool, args: argparse.Namespace) -> dict:
    spec = job_spec(kind, pair, cache, args)
    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    data = load_dataset(spec.dataset, 0)
    torch.manual_seed(0)
    student = build_model(pair[1], 100, data.input_shape).to(device)
    teacher = (
        build_model(pair[0], 100, data.input_shape).to(device).eval() if kind == "distill" else None
    )
    x = data.train.x[: args.batch].to(device)
    flops = step_flops(spec, student, None if cache else teacher, x)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    result = fit(spec, data, student, teacher, device, None)
    wall = time.perf_counter() - started
    rates = [h["images_per_s"] for h in result.history[1:]] or [result.history[0]["images_per_s"]]
    rate = statistics.median(rates)
    return {
        "images_per_s": rate,
        "tflops": flops / args.batch * rate / 1e12,
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30
        if device.type == "cuda"
        else None,
        "cached": result.used_teacher_cache,
        "wall_s": wall,
        "params": count_parameters(student),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run (CI)")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps-per-epoch", type=int, default=40)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the student")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    args = parser.parse_args()
    if args.smoke:
        args.batch, args.epochs, args.steps_per_epoch, args.size = 16, 2, 2, 16
        args.device = "cpu"
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.samples = int(args.batch * args.steps_per_epoch / 0.96) + 2
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_tflops(device)
    print(
        f"device {name}, torch {torch.__version__}, batch {args.batch}, {args.size}x"
        f"{args.size}, {args.epochs} epochs x {args.steps_per_epoch} steps, precision "
        f"{args.precision}, compile {args.compile}" + (" (smoke: CPU, tiny)" if args.smoke else "")
    )
    header = f"{'pair':<36}{'run':<18}{'img/s':>10}{'TFLOP/s':>9}{'of peak':>9}{'peak GiB':>10}"
    print(header)
    for pair in PAIRS:
        runs = {
            "student alone": measure("train", pair, False, args),
            "KD": measure("distill", pair, False, args),
            "KD cached teacher": measure("distill", pair, True, args),
        }
        for label, r in runs.items():
            of_peak = f"{r['tflops'] / peak:.1%}" if peak else "n/a"
            mem = f"{r['peak_mem_gib']:.2f}" if r["peak_mem_gib"] is not None else "n/a"
            print(
                f"{pair[0] + ' -> ' + pair[1]:<36}{label:<18}{r['images_per_s']:>10.1f}"
                f"{r['tflops']:>9.3f}{of_peak:>9}{mem:>10}"
            )
        overhead = runs["KD"]["images_per_s"] / runs["student alone"]["images_per_s"]
        cached = runs["KD cached teacher"]["images_per_s"] / runs["KD"]["images_per_s"]
        print(
            f"{'':<36}ratios: KD / student alone {overhead:.2f}, "
            f"cached KD / KD {cached:.2f} (cache used: {runs['KD cached teacher']['cached']})"
        )


if __name__ == "__main__":
    main()
