"""The streaming path, for image sets larger than memory.

The in-memory path (kdcore.image.data) decodes every image once into a float32 tensor: the
fastest way for small sets, and 120 GB for 200,000 photos at 224 px. Here a split is
an index of where each image's bytes lie (kdcore.image.records) and its images are decoded
when a batch is asked for: by DataLoader worker processes, a step ahead of the
training, into uint8 (a quarter of float32's bytes) that become float only on the
training device. Batch order is the same function of (seed, epoch) as in memory, so a
resumed epoch starts at its step without reading what it had consumed. Peak memory is
the workers' prefetched batches and the index (a few numbers per image), whatever the
dataset's size.

`training.decode: device` (the default on CUDA) leaves JPEG decoding to the training
device (torchvision.io.decode_jpeg: nvJPEG on a GPU) and resizes there; the workers
only read bytes, and decode on the CPU what is not a JPEG.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from kdcore.engine.splits import DataSplits, Split, split_rows
from kdcore.errors import DataError
from kdcore.image.augment import center_crop
from kdcore.image.records import RecordReader, Records, index_image_folder, index_webdataset
from kdcore.image.sources import count_images
from kdcore.spec import STREAMABLE_DATASETS, DatasetSpec

STATS_SAMPLES = 1024  # images the training split's mean and std are estimated from
CHANNEL_PROBE = 16  # images looked at to tell a grayscale set from a colour one
PREFETCH_BATCHES = 4  # per worker
MAX_WORKERS = 8
JPEG_MAGIC = b"\xff\xd8\xff"


def default_workers() -> int:
    """One decoding process per core, at most 8; none inside a daemonic process (a
    data-parallel rank or a parallel sweep trial, which may not start children): there
    the training process decodes."""
    if multiprocessing.current_process().daemon:
        return 0
    return min(MAX_WORKERS, len(os.sched_getaffinity(0)))


def decoded_bytes(count: int, side: int, channels: int = 3) -> int:
    """What `count` images take decoded as the in-memory path keeps them (float32)."""
    return count * channels * side * side * 4


def encoded_bytes(path: Path) -> int:
    """The files' bytes the in-memory path reads whole before decoding: an archive's
    size (JPEG and PNG barely compress, so a compressed archive inflates to about as
    much), or a folder's files (links are not followed, as the readers do not)."""
    if not path.is_dir():
        return path.stat().st_size
    return sum(
        entry.stat(follow_symlinks=False).st_size
        for folder, _, names in os.walk(path, followlinks=False)
        for entry in map(Path(folder).joinpath, names)
        if not entry.is_symlink()
    )


def in_memory_peak(count: int, side: int, encoded: int, channels: int = 3) -> int:
    """What the in-memory path holds at its peak for `count` images decoded at `side`:
    the encoded files (read whole, each let go once decoded) plus the decoded set as
    float32, held once (kdcore.image.data reorders, splits and normalises it in place).
    tests/kdcore/test_streaming_memory.py measures a run against it."""
    return decoded_bytes(count, side, channels) + encoded


def should_stream(spec: DatasetSpec, side: int) -> bool:
    """`dataset.streaming`: true and false force a path; auto streams when the in-memory
    path's peak would pass `dataset.memory_budget_mb` (counted from names and file
    sizes, nothing decoded)."""
    if spec.name not in STREAMABLE_DATASETS:
        if spec.streaming is True:
            raise DataError(
                f"dataset {spec.name!r} is decoded into memory; streaming reads "
                f"{' and '.join(sorted(STREAMABLE_DATASETS))} sets"
            )
        return False
    if spec.streaming != "auto":
        return spec.streaming
    assert spec.path is not None
    count = count_images(Path(spec.path), spec.name == "webdataset")
    return spec.streams(in_memory_peak(count, side, encoded_bytes(Path(spec.path))))


def decode_resized(content: bytes, name: str, side: int, channels: int) -> Tensor:
    """uint8 (channels, side, side). A JPEG is decoded at the smallest of libjpeg's
    scales (1/8..1) still at least `side` (PIL's draft mode: a large photo costs a
    fraction), then resized with antialiasing."""
    from PIL import Image, UnidentifiedImageError

    mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(io.BytesIO(content)) as img:
            img.draft(mode, (side, side))
            small = img.convert(mode).resize((side, side), Image.Resampling.BILINEAR)
            arr = np.asarray(small, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image {name}: {exc}") from None
    t = torch.from_numpy(arr.copy())
    return t[None] if t.ndim == 2 else t.permute(2, 0, 1).contiguous()


class _Decoder(torch.utils.data.Dataset):
    """A whole batch per call (one message per batch between processes): decoded and
    resized uint8, or (raw) the JPEGs' bytes left for the device to decode."""

    def __init__(self, records: Records, side: int, channels: int, raw: bool):
        self.reader, self.side, self.channels, self.raw = RecordReader(records), side, channels, raw

    def __len__(self) -> int:
        return len(self.reader.records)

    def __getitem__(self, rows: Tensor) -> Tensor | list[Tensor]:
        out = []
        for i in rows.tolist():
            content = self.reader.read(i)
            if self.raw and content.startswith(JPEG_MAGIC):
                out.append(torch.frombuffer(bytearray(content), dtype=torch.uint8))
            else:
                name = self.reader.records.name(i)
                out.append(decode_resized(content, name, self.side, self.channels))
        return out if self.raw else torch.stack(out)


def decode_on_device(items: list[Tensor], side: int, channels: int, device: torch.device) -> Tensor:
    """A `raw` batch made uint8 (N, C, side, side) on `device`: the JPEGs decoded there
    in one call (nvJPEG on CUDA), the rest already decoded by the workers."""
    from torchvision.io import ImageReadMode, decode_jpeg

    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    jpegs = [i for i in items if i.ndim == 1]
    decoded = iter(decode_jpeg(jpegs, mode=mode, device=device) if jpegs else [])
    out = []
    for item in items:
        img = next(decoded) if item.ndim == 1 else item.to(device)
        if img.shape[-2:] != (side, side):
            img = F.interpolate(img[None].float(), (side, side), mode="bilinear", antialias=True)
            img = img[0].round_().clamp_(0, 255).to(torch.uint8)
        out.append(img)
    return torch.stack(out)


class StreamedImages:
    """A split's images, decoded when a batch is asked for. It stands where the
    in-memory path has a float tensor (kdcore.image.data.Split.x): indexing and `split` give
    normalised float batches (for evaluation and probes); `batches` gives the training
    loop uint8 batches on the device, decoded ahead by the workers."""

    ndim = 4
    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(
        self,
        records: Records,
        rows: Tensor,
        side: int,
        channels: int,
        stats: tuple[Tensor, Tensor],
        crop: int | None,
        workers: int,
    ):
        self.records, self.rows, self.side, self.channels = records, rows, side, channels
        self.mean, self.std = stats
        self.crop, self.workers = crop, workers
        self.decode_on_device = False  # set by the trainer: `training.decode`
        self._plan: list[Tensor] = []  # the batches of the pass under way
        self._loader: torch.utils.data.DataLoader | None = None
        self._loader_key: tuple[bool, bool] | None = None

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        out = self.crop or self.side
        return (len(self), self.channels, out, out)

    def normalise(self, u8: Tensor) -> Tensor:
        """uint8 -> float in the dataset's statistics (and center-cropped for
        evaluation with the imagenet preset), where `u8` lies."""
        x = u8.float().div_(255)
        shape = (1, -1, 1, 1)
        x = (x - self.mean.to(x.device).view(shape)) / self.std.to(x.device).view(shape)
        return (center_crop(x, self.crop) if self.crop else x).contiguous()

    def decode(self, positions: Tensor) -> Tensor:
        """uint8 images at these positions of the split, decoded in this process."""
        decoder = _Decoder(self.records, self.side, self.channels, raw=False)
        return decoder[self.rows[positions].reshape(-1)]  # type: ignore[return-value]

    def __getitem__(self, positions: Tensor | slice) -> Tensor:
        index = torch.arange(len(self))[positions] if isinstance(positions, slice) else positions
        return self.normalise(self.decode(index.cpu()))

    def batches(self, positions: Sequence[Tensor], device: torch.device) -> Iterator[Tensor]:
        """uint8 batches on `device` for these lists of positions, in order, decoded by
        `workers` processes up to 4 batches each ahead (pinned memory on CUDA). The
        workers live as long as this split: each epoch hands them its own plan."""
        raw = self.decode_on_device
        self._plan[:] = [self.rows[p.cpu()] for p in positions]
        key = (raw, device.type == "cuda")
        if self._loader is None or self._loader_key != key:
            self._loader_key = key
            self._loader = torch.utils.data.DataLoader(
                _Decoder(self.records, self.side, self.channels, raw),
                batch_size=None,
                sampler=self._plan,  # read in this process at each new pass
                num_workers=self.workers,
                pin_memory=key[1] and not raw,
                prefetch_factor=PREFETCH_BATCHES if self.workers else None,
                persistent_workers=self.workers > 0,
            )
        for batch in self._loader:
            if raw:
                yield decode_on_device(batch, self.side, self.channels, device)
            else:
                yield batch.to(device, non_blocking=True)

    def split(self, size: int) -> Iterator[Tensor]:
        """Normalised float batches of `size` in order (kdcore.engine.precision.predict)."""
        chunks = list(torch.arange(len(self)).split(size))
        for u8 in self.batches(chunks, torch.device("cpu")):
            yield self.normalise(u8)

    def digest(self) -> str:
        """Which inputs these are, for the teacher cache's key."""
        h = hashlib.sha256(self.records.digest().encode())
        h.update(self.rows.numpy().tobytes())
        h.update(f"{self.side}:{self.crop}:{self.channels}".encode())
        h.update(self.mean.numpy().tobytes() + self.std.numpy().tobytes())
        return h.hexdigest()


def _probe_channels(records: Records) -> int:
    """1 when the first images are all grayscale, else 3 (a colour image in a
    grayscale set is converted to gray, a gray one in a colour set to RGB)."""
    from PIL import Image

    reader = RecordReader(records)
    for i in range(min(CHANNEL_PROBE, len(records))):
        try:
            with Image.open(io.BytesIO(reader.read(i))) as img:
                if img.mode not in ("1", "L", "I;16", "I"):
                    return 3
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot decode image {records.name(i)}: {exc}") from None
    return 1


def _statistics(spec: DatasetSpec, images: StreamedImages, seed: int) -> tuple[Tensor, Tensor]:
    """The given mean and std, else estimates from up to 1,024 training images drawn
    by the seed (the in-memory path reads the whole training split)."""
    if spec.mean is not None and spec.std is not None:
        if len(spec.mean) != images.channels:
            raise DataError(
                f"dataset.mean has {len(spec.mean)} values for {images.channels} channels"
            )
        return torch.tensor(spec.mean), torch.tensor(spec.std)
    g = torch.Generator().manual_seed(seed + 31)
    sample = torch.randperm(len(images), generator=g)[:STATS_SAMPLES]
    x = torch.cat(list(images.batches(list(sample.split(256)), torch.device("cpu"))))
    x = x.float().div_(255)
    return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3)).clamp_min(1e-6)


def load_streamed(
    spec: DatasetSpec, seed: int, crop: int | None, workers: int | None
) -> DataSplits:
    """Index an image folder or WebDataset shards and split them by the seed as the
    in-memory path does; training images are kept at `dataset.image_size` (the
    imagenet preset's larger side already), evaluation ones center-cropped to `crop`."""
    assert spec.path is not None
    path = Path(spec.path)
    records = index_webdataset(path) if spec.name == "webdataset" else index_image_folder(path)
    side, channels = spec.image_size or 32, _probe_channels(records)
    workers = default_workers() if workers is None else workers
    train_rows, val_rows, test_rows = split_rows(len(records), spec, seed)
    if len(train_rows) < 2:
        raise DataError("too few samples left to train on")
    probe = StreamedImages(
        records, train_rows, side, channels, (torch.zeros(1), torch.ones(1)), None, workers
    )
    stats = _statistics(spec, probe, seed)
    labels = torch.from_numpy(records.labels)

    def split(rows: Tensor, eval_crop: int | None) -> Split:
        images = StreamedImages(records, rows, side, channels, stats, eval_crop, workers)
        return Split(images, labels[rows])  # type: ignore[arg-type]

    classes = records.class_names
    return DataSplits(
        train=split(train_rows, None),
        val=split(val_rows, crop),
        test=split(test_rows, crop),
        num_classes=len(classes) if classes else int(labels.max()) + 1,
        input_shape=(channels, crop or side, crop or side),
        regression=False,
        mean=stats[0].tolist(),
        std=stats[1].tolist(),
        class_names=classes,
        streamed=True,
    )


def loading_report(data: DataSplits) -> dict[str, object]:
    """Which path ran (report.dataset.loading)."""
    x = data.train.x
    if isinstance(x, StreamedImages):
        return {
            "path": "streaming",
            "images": len(x.records),
            "data_workers": x.workers,
            "decode": "device" if x.decode_on_device else "workers",
        }
    held = sum(s.x.element_size() * s.x.nelement() for s in (data.train, data.val, data.test))
    return {"path": "in_memory", "decoded_bytes": held}


def input_digest(x: Tensor | StreamedImages) -> str:
    """Which inputs a split holds (the teacher cache's key), streamed or in memory."""
    from kdcore.image.teacher_cache import tensor_digest

    return x.digest() if isinstance(x, StreamedImages) else tensor_digest(x)
