"""Generated labelled JPEG sets: class k's images are a colour pattern plus noise, so a
small network learns them in an epoch or two."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def jpeg(rng: np.random.Generator, label: int, side: int = 24) -> bytes:
    base = np.zeros((side, side, 3), np.float32)
    base[..., label % 3] = 200
    base[: side // 2, :, (label + 1) % 3] = 120 * (label // 3)
    pixels = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_jpeg_folder(
    path: Path, count: int, classes: int = 4, side: int = 24, form: str = "tar"
) -> Path:
    """`<class>/<image>.jpg` as a plain tar, a zip or a folder (`form`)."""
    rng = np.random.default_rng(count)
    members = (
        (f"c{i % classes}/img{i:06d}.jpg", jpeg(rng, i % classes, side)) for i in range(count)
    )
    if form == "dir":
        for name, data in members:
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(data)
    elif form == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in members:
                zf.writestr(name, data)
    else:
        with tarfile.open(path, "w") as tf:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path
