"""Data loading throughput (issue 14), on generated JPEG photos of 320x240:

(a) decode + augment, images/s on one core, at 64, 128 and 224 px: the streaming
    path's work per image (libjpeg at a reduced scale, resize to side/0.875, then the
    imagenet preset's RandomResizedCrop + flip on the batch);
(b) training images/s of the streaming path against the in-memory path on the same
    set (it fits both), at 64 px with `data_workers` = the cores, cifar_resnet8 with
    the imagenet preset: the median over epochs 2.. (epoch 1 warms up), and the ratio.

  python bench/data_throughput.py [--images 2000] [--epochs 3] [--repeats 2]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from kdcore.image.augment import augment_batch
from kdcore.image.streaming import decode_resized
from kdcore.runs.entry import run as train_or_distill
from kdcore.runs.entry import train
from kdcore.spec import AugmentSpec, stored_side


def photo(rng: np.random.Generator, label: int) -> bytes:
    """A smooth 320x240 picture with a class-dependent colour, some texture and noise:
    it compresses like a photo (tens of KB), not like pure noise."""
    yy, xx = np.mgrid[0:240, 0:320].astype(np.float32)
    f = 0.02 + 0.01 * label
    img = np.stack(
        [128 + 100 * np.sin(f * xx + c + label) * np.cos(f * yy - c) for c in range(3)], -1
    )
    img += rng.normal(0, 12, img.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_set(path: Path, count: int, classes: int = 10) -> list[bytes]:
    rng = np.random.default_rng(0)
    images = [photo(rng, i % classes) for i in range(count)]
    with tarfile.open(path, "w") as tf:
        for i, data in enumerate(images):
            info = tarfile.TarInfo(f"c{i % classes}/img{i:06d}.jpg")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return images


def decode_augment_rate(images: list[bytes], side: int, repeats: int) -> float:
    """Images/s of one core decoding, resizing and augmenting batches of 64."""
    torch.set_num_threads(1)
    spec, keep = AugmentSpec(preset="imagenet"), stored_side(side)
    rates = []
    for r in range(repeats):
        start = time.perf_counter()
        for first in range(0, len(images), 64):
            batch = torch.stack(
                [decode_resized(b, "bench", keep, 3) for b in images[first : first + 64]]
            )
            x = batch.float().div_(255)
            augment_batch(x, spec, torch.Generator().manual_seed(r * 1000 + first), side)
        rates.append(len(images) / (time.perf_counter() - start))
    torch.set_num_threads(os.cpu_count() or 1)
    return statistics.median(rates)


def training_rate(path: Path, student: str, streaming: bool, epochs: int, workers: int) -> float:
    spec = {
        "kind": "train",
        "student": {"arch": student},
        "dataset": {"name": "imagefolder", "path": str(path), "image_size": 64},
        "augment": {"preset": "imagenet"},
        "training": {"epochs": epochs, "batch_size": 128, "device": "cpu"},
        "export": [],
    }
    spec["dataset"]["streaming"] = streaming
    spec["training"]["data_workers"] = workers
    with tempfile.TemporaryDirectory() as out:
        report = train(spec, out)
    return statistics.median(h["images_per_s"] for h in report["history"][1:])


def distill_rate(path: Path, side: int, epochs: int, loading: str, device: str) -> float:
    """(c): images/s of resnet50 -> resnet18 at `side` px, the set `loading` in memory,
    or streamed with JPEGs decoded by the workers or on the device."""
    spec = {
        "kind": "distill",
        "teacher": {"arch": "resnet50"},
        "student": {"arch": "resnet18"},
        "dataset": {"name": "imagefolder", "path": str(path), "image_size": side},
        "augment": {"preset": "imagenet"},
        "training": {"epochs": epochs, "batch_size": 128, "device": device},
        "export": [],
    }
    spec["dataset"]["streaming"] = loading != "memory"
    spec["training"]["decode"] = "device" if loading == "device" else "workers"
    with tempfile.TemporaryDirectory() as out:
        report = train_or_distill(spec, out)
    return statistics.median(h["images_per_s"] for h in report["history"][1:])


def gpu_loader(path: Path, args: argparse.Namespace) -> None:
    side = 64 if args.smoke else 224
    print(f"\n(c) resnet50 -> resnet18 at {side} px on {args.device} (images/s)")
    memory = distill_rate(path, side, args.epochs, "memory", args.device)
    print(f"  in {args.device} memory: {memory:8.1f}")
    for loading in ("device", "workers"):
        rate = distill_rate(path, side, args.epochs, loading, args.device)
        print(f"  streamed, decoded on the {loading}: {rate:8.1f} ({rate / memory:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.device is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "photos.tar"
            write_set(path, 96 if args.smoke else args.images)
            gpu_loader(path, args)
        return
    cores = len(os.sched_getaffinity(0))
    print(f"torch {torch.__version__}, {cores} cores")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "photos.tar"
        images = write_set(path, args.images)
        size_kb = sum(map(len, images)) / len(images) / 1024
        print(f"{len(images)} JPEGs of 320x240, {size_kb:.1f} KB each")
        print("\n(a) decode + augment on one core (images/s, median of", args.repeats, "runs)")
        for side in (64, 128, 224):
            rate = decode_augment_rate(images[:512], side, args.repeats)
            print(f"  {side:>3} px: {rate:8.0f} images/s per core")
        print(f"\n(b) training at 64 px, data_workers={cores} (images/s)")
        for student in ("resnet18", "cifar_resnet8"):
            memory, streamed = [], []
            for _ in range(args.repeats):
                memory.append(training_rate(path, student, False, args.epochs, cores))
                streamed.append(training_rate(path, student, True, args.epochs, cores))
            m, s = statistics.median(memory), statistics.median(streamed)
            print(
                f"  {student:<14} in memory {m:7.1f}  streaming {s:7.1f}  "
                f"streaming / in memory {s / m:.2f}x"
            )
        print("  (goal: at least 0.8x)")


if __name__ == "__main__":
    main()
