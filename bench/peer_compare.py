"""KD speed beside a peer, in one run: kdcore and torchdistill distil the same teacher
into the same student, on the same data, with the same optimizer and augmentation, for
the same number of epochs; prints the median training images/s of each and the ratios.

    python bench/peer_compare.py [--epochs 3] [--rounds 2] [--workers 0] [--device cpu]
                                 [--no-levers | --levers-only]

Setup: `cifar_resnet56 -> cifar_resnet20` (kdcore's modules on both sides, so the
frameworks are what differ), scikit-learn's digits written once as a folder of 32x32
PNG files (torchvision's ImageFolder reads the folder; kdcore reads the same files as a tar),
batch 64, SGD (lr 0.05, momentum 0.9, weight decay 5e-4, cosine), KD with T=4 and
0.1 CE + 0.9 KD. The teacher is trained once (by kdcore, 6 epochs, kept in .bench/) and
both sides load its weights: kdcore's int8 teacher is used only if a trained teacher's
soft targets pass the fidelity check, so the check must see a real one.

With augmentation: random 32x32 crops of the image padded by 2 (so no
teacher cache on either side); without: none (kdcore then caches the teacher's outputs,
torchdistill runs the teacher every step). kdcore runs at fp32 and at `auto` (bf16
autocast where the CPU has native bf16); torchdistill at its default, fp32. The first
epoch of each run warms up oneDNN and is left out of the medians. A third row, "crop,
later job", is a second kdcore job with the same teacher, data and seed as a first one
that stored its crops' soft labels (kdcore.image.teacher_cache, FKD): it skips the teacher;
torchdistill has no such cache, so its figure there is its crop figure. The runs alternate
(peer, kdcore fp32, kdcore auto) for `--rounds` rounds, so a slow minute of a shared
machine does not land on one side only. `--device cuda` runs both sides on the GPU
(bench/gpu.sh calls it so when a device is lent).

Then the levers, one at a time on the CPU (median ms per batch of 64): the teacher's
forward as the peer runs it, in channels_last, BN-folded and int8; the student's
training step in NCHW and in channels_last.

torchdistill (the current release on PyPI) is installed on first use into its own
virtualenv, .bench/torchdistill, which uses this environment's torch and torchvision
(the same kernels on both sides). The peer's side is bench/peer/torchdistill_side.py.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PEER = ROOT / ".bench" / "torchdistill"
DATA = ROOT / ".bench" / "digits32"
TEACHER = ROOT / ".bench" / "teacher_cifar_resnet56_digits32.safetensors"
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


def _spec(tar: Path, augment: bool, precision: str, epochs: int, device: str) -> Any:
    from kdcore.checks.validate import parse_spec

    return parse_spec(
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
                "device": device,
            },
        }
    )


def trained_teacher(tar: Path) -> Path:
    """The teacher both sides distil from: trained once by kdcore (6 epochs with crops)."""
    if TEACHER.exists():
        return TEACHER
    from safetensors.torch import save_file

    from kdcore.engine.device import pick_device
    from kdcore.image.data import load_dataset
    from kdcore.image.trainer import fit
    from kdcore.models import build_model

    spec = _spec(tar, True, "auto", 6, "auto")
    spec = spec.model_copy(update={"kind": "train", "teacher": None})
    data = load_dataset(spec.dataset, 0)
    torch.manual_seed(0)
    teacher = build_model(SETTINGS["teacher"], data.num_classes, data.input_shape)
    fit(spec, data, teacher, None, pick_device("auto"), None)
    save_file({k: v.contiguous().cpu() for k, v in teacher.state_dict().items()}, TEACHER)
    return TEACHER


def ours(
    tar: Path, augment: bool, precision: str, epochs: int, device: str, cache: Path | None = None
) -> dict:
    from safetensors.torch import load_file

    from kdcore.engine.device import pick_device
    from kdcore.image.data import load_dataset
    from kdcore.image.trainer import fit
    from kdcore.models import build_model

    spec = _spec(tar, augment, precision, epochs, device)
    data = load_dataset(spec.dataset, 0)
    torch.manual_seed(0)
    student = build_model(SETTINGS["student"], data.num_classes, data.input_shape)
    teacher = build_model(SETTINGS["teacher"], data.num_classes, data.input_shape)
    teacher.load_state_dict(load_file(TEACHER))
    result = fit(spec, data, student, teacher, pick_device(device), None, teacher_cache=cache)
    forward = result.teacher_forward
    how = "cached" if result.used_teacher_cache else (forward.precision if forward else "?")
    if result.teacher_store and result.teacher_store["from_disk"]:
        how = "from disk"
    return {"images_per_s": [h["images_per_s"] for h in result.history], "teacher": how}


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
        "teacher_weights": str(TEACHER),
        "device": args.device,
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


def warm_median(runs: list[list[float]]) -> float:
    """The median over every run's epochs but its first (oneDNN/cuDNN warm-up)."""
    return statistics.median([r for rates in runs for r in (rates[1:] or rates)])


def _ms(fn: Any, reps: int = 10) -> float:
    fn()
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def levers(tar: Path) -> None:
    """Each lever alone on the CPU: median ms per batch of 64 (augmented digits)."""
    import torch.nn.functional as F
    from safetensors.torch import load_file

    from kdcore.image import fast_teacher
    from kdcore.image.augment import augment_batch
    from kdcore.image.data import load_dataset
    from kdcore.models import build_model

    spec = _spec(tar, True, "fp32", 1, "cpu")
    data = load_dataset(spec.dataset, 0)

    def batch(i: int) -> Tensor:
        idx = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(i))[:64]
        return augment_batch(data.train.x[idx], spec.augment, torch.Generator().manual_seed(i))

    calibration = [batch(i) for i in range(8)]
    x = batch(99)
    nhwc = x.contiguous(memory_format=torch.channels_last)
    teacher = build_model(SETTINGS["teacher"], data.num_classes, data.input_shape)
    teacher.load_state_dict(load_file(TEACHER))
    teacher.eval()
    folded = fast_teacher.fold_batchnorm(teacher)
    int8 = fast_teacher.quantize_int8(teacher, calibration)
    assert folded is not None and int8 is not None
    agreement, kl = fast_teacher.fidelity(folded, int8, [batch(i) for i in range(8, 16)], 4.0)

    def forward(model: Any, inp: Tensor) -> Any:
        def run() -> None:
            with torch.inference_mode():
                model(inp)

        return run

    base = _ms(forward(teacher, x))
    rows = [("teacher forward, as the peer runs it (NCHW)", base)]
    teacher_cl = copy.deepcopy(teacher).to(memory_format=torch.channels_last)
    rows.append(("teacher forward, channels_last", _ms(forward(teacher_cl, nhwc))))
    folded.to(memory_format=torch.channels_last)
    rows.append(("teacher forward, channels_last + BN folded", _ms(forward(folded, nhwc))))
    int8_name = f"teacher forward, int8 (agreement {agreement:.4f}, KL {kl:.1e})"
    rows.append((int8_name, _ms(forward(int8, nhwc))))
    y = data.train.y[:64]
    for name, memory_format, inp in (
        ("student step, NCHW", torch.contiguous_format, x),
        ("student step, channels_last", torch.channels_last, nhwc),
    ):
        torch.manual_seed(0)
        student = build_model(SETTINGS["student"], data.num_classes, data.input_shape)
        student.to(memory_format=memory_format)
        opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

        def step(model: Any = student, o: Any = opt, i: Tensor = inp) -> None:
            loss = F.cross_entropy(model(i), y)
            o.zero_grad(set_to_none=True)
            loss.backward()
            o.step()

        rows.append((name, _ms(step)))
    print(f"\n{'lever (CPU, batch of 64)':<58}{'ms':>8}{'vs first':>10}")
    for i, (name, ms) in enumerate(rows):
        first = rows[0][1] if name.startswith("teacher") else rows[-2][1]
        print(f"{name:<58}{ms:>8.1f}{first / ms:>9.2f}x" if i else f"{name:<58}{ms:>8.1f}")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main() -> None:
    from kdcore.engine.precision import uses_bf16

    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of each")
    parser.add_argument("--workers", type=int, default=0, help="torchdistill's DataLoader")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--no-levers", action="store_true", help="skip the per-lever table")
    parser.add_argument("--levers-only", action="store_true", help="only the per-lever table")
    args = parser.parse_args()
    peer_python()
    folder, tar, mean, std = digits_folder()
    trained_teacher(tar)
    if args.levers_only:
        levers(tar)
        return
    device = torch.device(args.device)
    native = uses_bf16(device, "auto")
    where = torch.cuda.get_device_name() if args.device == "cuda" else cpu_model()
    print(
        f"{time.strftime('%Y-%m-%d', time.gmtime())}, {where}, "
        f"bf16 {'native' if native else 'not native (auto = fp32)'}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {args.rounds} rounds x {args.epochs} epochs each, "
        f"medians of epochs 2-{args.epochs}"
    )
    rows = []
    for case in ("crop", "none", "crop, later job"):
        augment = case != "none"
        runs: dict[str, list[list[float]]] = {"peer": [], "fp32": [], "auto": []}
        teacher = {}
        for _ in range(args.rounds):
            if case == "crop, later job":  # the peer has no such cache: its crop figure
                runs["peer"] = [[rows[0][1]["peer"]]]
            else:
                peer = theirs(folder, mean, std, augment, args)
                runs["peer"].append(peer["images_per_s"])
            for precision in ("fp32", "auto"):
                with tempfile.TemporaryDirectory() as tmp:
                    cache = Path(tmp) if case == "crop, later job" else None
                    if cache is not None:  # an earlier job with the same seed fills it
                        ours(tar, augment, precision, args.epochs, args.device, cache)
                    mine = ours(tar, augment, precision, args.epochs, args.device, cache)
                runs[precision].append(mine["images_per_s"])
                teacher[precision] = mine["teacher"]
        medians = {k: warm_median(v) for k, v in runs.items()}
        rows.append((case, medians, teacher, peer["version"]))
    version = rows[0][3]
    print(
        f"\n{'augmentation':<14}{'kdcore fp32':>12}{'kdcore auto':>12}"
        f"{'torchdistill ' + version:>20}{'fp32 ratio':>12}{'auto ratio':>12}  kdcore's teacher"
    )
    for case, m, teacher, _ in rows:
        print(
            f"{case:<14}{m['fp32']:>12.1f}{m['auto']:>12.1f}"
            f"{m['peer']:>20.1f}{m['fp32'] / m['peer']:>11.2f}x{m['auto'] / m['peer']:>11.2f}x"
            f"  {teacher['fp32']} / {teacher['auto']}"
        )
    print(
        "(images/s of training; torchdistill runs fp32, its teacher in fp32; 'crop, later job':"
        " a second job with the same teacher, data and seed reads the crop soft labels the"
        " first one stored, kdcore.image.teacher_cache)"
    )
    if not args.no_levers:
        levers(tar)


if __name__ == "__main__":
    main()
