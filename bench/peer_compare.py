"""KD speed beside a peer, in one run: kdcore and torchdistill distil the same teacher
into the same student, on the same data, with the same optimizer and augmentation, for
the same number of epochs; prints the median training images/s of each and the ratios.

    python bench/peer_compare.py [--epochs 3] [--workers 0]

Setup: `cifar_resnet56 -> cifar_resnet20` (kdcore's modules on both sides, so the
frameworks are what differ), scikit-learn's digits written once as a folder of 32x32
PNG files (torchvision's ImageFolder reads the folder; kdcore reads the same files as a tar),
batch 64, SGD (lr 0.05, momentum 0.9, weight decay 5e-4, cosine), KD with T=4 and
0.1 CE + 0.9 KD. With augmentation: random 32x32 crops of the image padded by 2 (so no
teacher cache on either side); without: none (kdcore then caches the teacher's outputs,
torchdistill runs the teacher every step). kdcore runs at fp32 and at `auto` (bf16
autocast where the CPU has native bf16); torchdistill at its default, fp32. The first
epoch of each run warms up oneDNN and is left out of the medians.

torchdistill (the current release on PyPI) is installed on first use into its own
virtualenv, .bench/torchdistill, which uses this environment's torch and torchvision
(the same kernels on both sides). The peer's side is bench/peer/torchdistill_side.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PEER = ROOT / ".bench" / "torchdistill"
DATA = ROOT / ".bench" / "digits32"
SETTINGS = {
    "teacher": "cifar_resnet56",
    "student": "cifar_resnet20",
    "image_size": 32,
    "batch_size": 64,
    "lr": 0.05,
    "weight_decay": 5e-4,
    "temperature": 4.0,
    "ce_weight": 0.1,
}


def peer_python() -> Path:
    """The peer's virtualenv, made on first use: torchdistill without its dependencies
    (torch, torchvision, numpy, scipy, yaml come from this environment), installed by
    this environment's pip, so the virtualenv holds no pip or setuptools of its own."""
    python = PEER / "bin" / "python"
    if (PEER / ".ready").exists():
        return python
    subprocess.run(
        [sys.executable, "-m", "venv", "--clear", "--without-pip", str(PEER)], check=True
    )
    ours = sysconfig.get_paths()["purelib"]
    theirs = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(theirs, "kdservice_env.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    subprocess.run([*pip, "install", "-q", "--no-deps", "torchdistill"], check=True)
    (PEER / ".ready").write_text("")
    return python


def digits_folder() -> tuple[Path, Path, float, float]:
    """digits at 32x32 as <class>/<n>.png, and the same files as a tar; mean and std."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).astype(np.uint8)
    tar = DATA.with_suffix(".tar")
    if not tar.exists():
        for i, (image, label) in enumerate(zip(images, digits.target, strict=True)):
            path = DATA / str(label) / f"{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).resize((32, 32), Image.BILINEAR).save(path)
        with tarfile.open(tar, "w") as archive:
            archive.add(DATA, arcname="digits32")
    pixels = np.stack([np.asarray(Image.open(p), np.float32) / 255 for p in DATA.rglob("*.png")])
    return DATA, tar, float(pixels.mean()), float(pixels.std())


def ours(tar: Path, augment: bool, precision: str, epochs: int) -> list[float]:
    from kdcore.data import load_dataset
    from kdcore.models import build_model
    from kdcore.trainer import fit
    from kdcore.validate import parse_spec

    spec = parse_spec(
        {
            "kind": "distill",
            "teacher": {"arch": SETTINGS["teacher"]},
            "student": {"arch": SETTINGS["student"]},
            "dataset": {
                "name": "imagefolder",
                "path": str(tar),
                "image_size": SETTINGS["image_size"],
                "val_fraction": 0.0,
                "test_fraction": 0.05,
            },
            "augment": {"crop_padding": 2} if augment else {},
            "distillation": {
                "method": "kd",
                "temperature": SETTINGS["temperature"],
                "ce_weight": SETTINGS["ce_weight"],
                "kd_weight": 1 - SETTINGS["ce_weight"],
            },
            "training": {
                "epochs": epochs,
                "batch_size": SETTINGS["batch_size"],
                "optimizer": "sgd",
                "lr": SETTINGS["lr"],
                "momentum": 0.9,
                "weight_decay": SETTINGS["weight_decay"],
                "schedule": "cosine",
                "precision": precision,
            },
        }
    )
    data = load_dataset(spec.dataset, 0)
    torch.manual_seed(0)
    student = build_model(SETTINGS["student"], data.num_classes, data.input_shape)
    teacher = build_model(SETTINGS["teacher"], data.num_classes, data.input_shape)
    result = fit(spec, data, student, teacher, torch.device("cpu"), None)
    print(result.teacher_forward, file=sys.stderr)
    return [h["images_per_s"] for h in result.history]


def theirs(folder: Path, mean: float, std: float, augment: bool, args: argparse.Namespace) -> dict:
    cfg = {
        **SETTINGS,
        "folder": str(folder),
        "mean": mean,
        "std": std,
        "crop_padding": 2 if augment else 0,
        "epochs": args.epochs,
        "workers": args.workers,
        "threads": torch.get_num_threads(),
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    side = ROOT / "bench" / "peer" / "torchdistill_side.py"
    out = subprocess.run(
        [str(peer_python()), str(side), json.dumps(cfg)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"torchdistill's side failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def warm_median(rates: list[float]) -> float:
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main() -> None:
    from kdcore.trainer import uses_bf16

    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="torchdistill's DataLoader")
    args = parser.parse_args()
    peer_python()
    folder, tar, mean, std = digits_folder()
    native = uses_bf16(torch.device("cpu"), "auto")
    print(
        f"{time.strftime('%Y-%m-%d', time.gmtime())}, {cpu_model()}, "
        f"bf16 {'native' if native else 'not native (auto = fp32)'}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {args.epochs} epochs each, medians of epochs "
        f"2-{args.epochs}"
    )
    rows = []
    for augment in (True, False):
        peer = theirs(folder, mean, std, augment, args)
        fp32 = warm_median(ours(tar, augment, "fp32", args.epochs))
        auto = warm_median(ours(tar, augment, "auto", args.epochs))
        rows.append((augment, fp32, auto, warm_median(peer["images_per_s"]), peer["version"]))
    version = rows[0][4]
    print(
        f"\n{'augmentation':<14}{'kdcore fp32':>12}{'kdcore auto':>12}"
        f"{'torchdistill ' + version:>20}{'fp32 ratio':>12}{'auto ratio':>12}"
    )
    for augment, fp32, auto, peer, _ in rows:
        print(
            f"{'crop' if augment else 'none':<14}{fp32:>12.1f}{auto:>12.1f}{peer:>20.1f}"
            f"{fp32 / peer:>11.2f}x{auto / peer:>11.2f}x"
        )
    print("(images/s of training; torchdistill runs fp32)")


if __name__ == "__main__":
    main()
