"""Datasets (a registry). A set is decoded once into tensors; the trainer then slices
batches out of them (on the training device when they fit), so there is no per-epoch
decoding and no DataLoader worker overhead for small data. An image set too large for
that (dataset.memory_budget_mb) is streamed instead (kdcore.image.streaming).

A loader returns a `RawData` (all samples, plus an optional predefined test split);
`load_dataset` resizes, splits deterministically by seed and normalises with the
training split's statistics.
"""

from __future__ import annotations

import gzip
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from kdcore.engine.splits import DataSplits, Split, permute_rows_, split_rows
from kdcore.errors import ChannelCountError, DataError
from kdcore.image import streaming
from kdcore.image.augment import center_crop
from kdcore.image.sources import iter_image_folder, iter_webdataset
from kdcore.io.archives import inspect_npz
from kdcore.registry import Registry
from kdcore.spec import AugmentSpec, DatasetSpec, JobSpec, stored_side

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass
class RawData:
    """What a loader returns; load_dataset owns it from then on (reorders and normalises
    x in place: a loader hands over a tensor of its own, never a cached one)."""

    x: Tensor  # float32, (N, C, H, W) in [0, 1] or (N, D)
    y: Tensor  # int64 labels or float32 targets
    num_classes: int  # output width (number of targets for regression)
    test: tuple[Tensor, Tensor] | None = None
    class_names: list[str] | None = None


Loader = Callable[[DatasetSpec, int], RawData]
DATASETS: Registry[Loader] = Registry("dataset")
# datasets read from a file the user gives (dataset.path; an uploaded file id in the
# service); the others are built in and take no file in the service
FILE_DATASETS = frozenset({"imagefolder", "npz", "webdataset", "text"})  # text: kdcore.text


def needs_path(name: str) -> bool:
    return name in FILE_DATASETS


@DATASETS.register("digits")
def load_digits_data(spec: DatasetSpec, seed: int) -> RawData:
    """scikit-learn's bundled 8x8 digits (1,797 images, no download)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return RawData(x, torch.tensor(bunch.target, dtype=torch.int64), 10)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != math.prod(dims):
        raise DataError(f"{path} is truncated: expected {math.prod(dims)} values, got {body.size}")
    return body.reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.exists():
            return candidate
    raise DataError(
        f"{stem}(.gz) not found in {folder}; install the Debian package dataset-fashion-mnist "
        "or set dataset.path to a folder with the original IDX files"
    )


@DATASETS.register("fashion_mnist")
def load_fashion_mnist(spec: DatasetSpec, seed: int) -> RawData:
    folder = Path(spec.path) if spec.path else FASHION_MNIST_DIR
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(_find_idx(folder, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find_idx(folder, f"{prefix}-labels-idx1-ubyte"))
        if images.shape[0] != labels.shape[0]:
            raise DataError(f"{split}: {images.shape[0]} images but {labels.shape[0]} labels")
        x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
        parts[split] = (x, torch.from_numpy(labels.astype(np.int64)))
    names = [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ]
    return RawData(*parts["train"], 10, test=parts["test"], class_names=names)


@DATASETS.register("synthetic")
def load_synthetic(spec: DatasetSpec, seed: int) -> RawData:
    """Learnable random data: class prototypes plus noise, or a noisy linear target."""
    g = torch.Generator().manual_seed(seed + 7919)
    shape = tuple(spec.shape)
    n = spec.num_samples
    if spec.regression:
        x = torch.rand((n, *shape), generator=g)
        w = torch.randn((math.prod(shape), spec.num_classes), generator=g) / math.sqrt(
            math.prod(shape)
        )
        y = x.flatten(1) @ w + spec.noise * 0.1 * torch.randn((n, spec.num_classes), generator=g)
        return RawData(x, y.squeeze(1) if spec.num_classes == 1 else y, spec.num_classes)
    prototypes = torch.rand((spec.num_classes, *shape), generator=g)
    y = torch.randint(0, spec.num_classes, (n,), generator=g)
    x = (prototypes[y] + spec.noise * torch.randn((n, *shape), generator=g)).clamp(0, 1)
    return RawData(x, y, spec.num_classes)


def _decode_image(content: bytes, name: str) -> Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(content)) as img:
            mode = "L" if img.mode in ("1", "L", "I;16", "I") else "RGB"
            arr = np.asarray(img.convert(mode), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"cannot decode image {name}: {exc}") from None
    t = torch.from_numpy(arr.copy())
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)


@DATASETS.register("imagefolder")
def load_imagefolder(spec: DatasetSpec, seed: int) -> RawData:
    """`<class>/<image>` in a zip or tar archive, or in a folder (an optional single top
    folder is fine)."""
    if not spec.path:
        raise DataError("imagefolder needs dataset.path")
    samples = list(iter_image_folder(Path(spec.path)))
    if not samples:
        raise DataError("the archive holds no images in class folders")
    classes = sorted({c for c, _, _ in samples})
    if len(classes) < 2:
        raise DataError("an imagefolder archive needs at least two class folders")
    y = torch.tensor([classes.index(c) for c, _, _ in samples], dtype=torch.int64)
    images: list[tuple[str, bytes] | None] = [(name, content) for _, name, content in samples]
    del samples  # `images` holds the only reference to each file's bytes: freed as decoded
    return RawData(_decoded(images, spec.image_size), y, len(classes), class_names=classes)


@DATASETS.register("webdataset")
def load_webdataset(spec: DatasetSpec, seed: int) -> RawData:
    """WebDataset shards: a .tar, or a folder of them, of `<key>.jpg|png` + `<key>.cls`."""
    if not spec.path:
        raise DataError("webdataset needs dataset.path")
    samples = list(iter_webdataset(Path(spec.path)))
    if not samples:
        raise DataError("the shards hold no samples")
    y = torch.tensor([label for label, _, _ in samples], dtype=torch.int64)
    images: list[tuple[str, bytes] | None] = [(name, content) for _, name, content in samples]
    del samples  # `images` holds the only reference to each file's bytes: freed as decoded
    x = _decoded(images, spec.image_size)
    classes = int(y.max()) + 1
    if classes < 2:
        raise DataError("the shards need at least two classes")
    return RawData(x, y, classes)


def _decoded(images: list[tuple[str, bytes] | None], size: int | None) -> Tensor:
    """Decode and resize to size x size (default 32) straight into one tensor, channels
    made equal (a colour image in a grey set widens it once). Each entry of `images` is
    let go as it is decoded, so the encoded and the decoded set are never both whole."""
    side = size or 32
    out: Tensor | None = None
    for i, item in enumerate(images):
        assert item is not None
        images[i] = None
        img = _decode_image(item[1], item[0])
        img = F.interpolate(img[None], size=(side, side), mode="bilinear", antialias=True)[0]
        if out is None:
            out = torch.empty(len(images), img.shape[0], side, side)
        elif img.shape[0] > out.shape[1]:
            out = out.expand(-1, img.shape[0], -1, -1).clone()
        out[i] = img.expand(out.shape[1], -1, -1)
    assert out is not None  # the callers refuse an empty set first
    return out


@DATASETS.register("npz")
def load_npz(spec: DatasetSpec, seed: int) -> RawData:
    """An .npz with `x` (N, ...) and `y` (N,) integer labels or float targets.
    Loaded with allow_pickle=False: object arrays are refused."""
    if not spec.path:
        raise DataError("npz needs dataset.path")
    check_npz_arrays(inspect_npz(Path(spec.path)))
    try:
        with np.load(spec.path, allow_pickle=False) as npz:
            xs, ys = npz["x"], npz["y"]
    except (ValueError, OSError, EOFError, KeyError):
        raise DataError(f"cannot read npz {Path(spec.path).name}") from None
    if xs.shape[0] != ys.shape[0] or xs.shape[0] == 0:
        raise DataError(f"x has {xs.shape[0]} rows but y has {ys.shape[0]}")
    if not np.issubdtype(xs.dtype, np.number):
        raise DataError("x must be numeric")
    x = torch.from_numpy(xs.astype(np.float32))
    if xs.dtype == np.uint8:
        x = x / 255.0
    if x.ndim == 3:  # (N, H, W) grayscale images
        x = x.unsqueeze(1)
    if np.issubdtype(ys.dtype, np.integer):
        y = torch.from_numpy(ys.astype(np.int64)).reshape(-1)
        if y.min() < 0:
            raise DataError("class labels must be >= 0")
        return RawData(x, y, int(y.max()) + 1)
    if not np.issubdtype(ys.dtype, np.floating):
        raise DataError("y must hold integer labels or float targets")
    y = torch.from_numpy(ys.astype(np.float32))
    return RawData(x, y, 1 if y.ndim == 1 else int(y.shape[1]))


def check_npz_arrays(shapes: dict[str, tuple[int, ...]]) -> None:
    """The arrays an npz dataset needs, from `inspect_npz`'s shapes (nothing loaded)."""
    if "x" not in shapes or "y" not in shapes:
        raise DataError(f"the npz must hold arrays 'x' and 'y'; it has {sorted(shapes)}")
    x, y = shapes["x"], shapes["y"]
    if not x or not y or x[0] != y[0] or x[0] == 0:
        raise DataError(f"x has shape {list(x)} and y {list(y)}: they need the same rows (> 0)")


def _resize(x: Tensor, size: int | None) -> Tensor:
    if size is None or x.ndim != 4 or x.shape[-1] == size and x.shape[-2] == size:
        return x
    out = []
    for chunk in x.split(4096):
        out.append(F.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True))
    return torch.cat(out)


def load_dataset(
    spec: DatasetSpec,
    seed: int,
    regression: bool = False,
    augment: AugmentSpec | None = None,
    data_workers: int | None = None,
) -> DataSplits:
    """Decode, split (deterministic by seed), resize and normalise. With the imagenet
    preset (augment.preset), training images are kept at image_size / 0.875 for the
    trainer's random resized crops, and evaluation images resized so and center-cropped
    to image_size. An image set that would not fit `dataset.memory_budget_mb` decoded
    (or `dataset.streaming: true`) is streamed instead (kdcore.image.streaming, decoded by
    `data_workers` processes; default one per core)."""
    crop = spec.image_size if augment is not None and augment.preset == "imagenet" else None
    if crop is not None:
        spec = spec.model_copy(update={"image_size": stored_side(crop)})
    if streaming.should_stream(spec, spec.image_size or 32):
        if regression:
            raise DataError(
                f"dataset {spec.name!r} has integer class labels, which does not fit the task"
            )
        return streaming.load_streamed(spec, seed, crop, data_workers)
    raw = DATASETS.get(spec.name)(spec, seed)
    if not all(bool(torch.isfinite(rows).all()) for rows in raw.x.split(256)):  # small temps
        raise DataError("the inputs contain NaN or infinite values")
    is_regression = raw.y.dtype.is_floating_point
    if regression != is_regression:
        kind = "float targets" if is_regression else "integer class labels"
        raise DataError(f"dataset {spec.name!r} has {kind}, which does not fit the task")
    train_idx, val_idx, test_idx, test = _split_indices(spec, raw, seed)
    if len(train_idx) < 2:
        raise DataError("too few samples left to train on")
    # the loader's tensor reordered in place (train, val[, test]); the splits are views
    # of it, normalised in place: the set is held once, not once per step (its peak is
    # what `dataset.memory_budget_mb` is checked against: kdcore.image.streaming.in_memory_peak)
    order = torch.cat([train_idx, val_idx, test_idx])
    x, y = _resize(permute_rows_(raw.x, order), spec.image_size), raw.y[order]
    num_classes, class_names = raw.num_classes, raw.class_names
    del raw  # the loader's own copy goes
    if test is not None:
        test = (_resize(test[0], spec.image_size), test[1])
    n_train, n_val = len(train_idx), len(val_idx)
    if crop is not None and x.ndim != 4:
        raise DataError("augment.preset imagenet needs images")
    mean, std = _statistics(spec, x[:n_train])
    shape = (1, -1, 1, 1) if x.ndim == 4 else (1, -1)
    x.sub_(mean.view(shape)).div_(std.view(shape))
    if test is not None:
        test = (((test[0] - mean.view(shape)) / std.view(shape)).contiguous(), test[1])
    else:
        test = (x[n_train + n_val :], y[n_train + n_val :])

    def evaluation(t: Tensor) -> Tensor:
        return center_crop(t, crop) if crop is not None else t

    train = Split(x[:n_train], y[:n_train])
    val = Split(evaluation(x[n_train : n_train + n_val]), y[n_train : n_train + n_val])
    side = x.shape[1:]
    return DataSplits(
        train=train,
        val=val,
        test=Split(evaluation(test[0]), test[1]),
        num_classes=num_classes,
        input_shape=(side[0], crop, crop) if crop else tuple(side),
        regression=is_regression,
        mean=mean.flatten().tolist() if mean.ndim else [float(mean)],
        std=std.flatten().tolist() if std.ndim else [float(std)],
        class_names=class_names,
    )


def _split_indices(
    spec: DatasetSpec, raw: RawData, seed: int
) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, Tensor] | None]:
    """(train, val, test rows of raw.x, the set's own test split or None): split by the
    seed when the set has no test split of its own (kdcore.engine.splits)."""
    if raw.test is None:
        train_idx, val_idx, test_idx = split_rows(len(raw.x), spec, seed)
        return train_idx, val_idx, test_idx, None
    g = torch.Generator().manual_seed(seed)
    rest = torch.randperm(len(raw.x), generator=g)
    test = raw.test
    if spec.max_samples:
        rest = rest[: spec.max_samples]
        # a quick run stays quick: the official test set is capped the same way
        keep = torch.randperm(len(test[0]), generator=g)[: spec.max_samples]
        test = (test[0][keep], test[1][keep])
    n_val = round(len(rest) * spec.val_fraction)
    return rest[n_val:], rest[:n_val], torch.zeros(0, dtype=torch.long), test


def load_job_data(spec: JobSpec) -> DataSplits:
    """The data a job trains and is measured on."""
    return load_dataset(
        spec.dataset,
        spec.training.seed,
        spec.task == "regression",
        spec.augment,
        spec.training.data_workers,
    )


def _statistics(spec: DatasetSpec, train_x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std: the ones given, else the training split's only (no
    test leakage)."""
    if spec.mean is not None and spec.std is not None:
        channels = train_x.shape[1] if train_x.ndim == 4 else 1
        if len(spec.mean) != channels:
            raise ChannelCountError(len(spec.mean), channels)
        return torch.tensor(spec.mean), torch.tensor(spec.std)
    dims = [0, 2, 3] if train_x.ndim == 4 else [0]
    return train_x.mean(dim=dims), train_x.std(dim=dims).clamp_min(1e-6)


def model_input(data: DataSplits, x: Tensor) -> Tensor:
    """Training samples as the model takes them: the imagenet preset keeps them larger
    than its input (for random crops), so they are center-cropped here."""
    side = data.input_shape[-1]
    return center_crop(x, side) if x.ndim == 4 and x.shape[-1] > side else x


def describe(spec: DatasetSpec) -> tuple[tuple[int, ...], int, bool] | None:
    """(input_shape, num_classes, regression) of a built-in dataset without loading it,
    for validating a spec; None for datasets known only after decoding a file."""
    side = spec.image_size
    if spec.name == "digits":
        return (1, side or 8, side or 8), 10, False
    if spec.name == "fashion_mnist":
        return (1, side or 28, side or 28), 10, False
    if spec.name == "synthetic":
        shape = tuple(spec.shape)
        if side and len(shape) == 3:
            shape = (shape[0], side, side)
        return shape, spec.num_classes, spec.regression
    return None
