"""Image folders on disk and WebDataset shards (kdcore.image.sources): loaded, sized
without decoding, trained on; and malformed or hostile ones refused."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdcore.checks.cost import dataset_size
from kdcore.errors import DataError
from kdcore.image.data import load_dataset
from kdcore.runs.entry import run
from kdcore.spec import DatasetSpec


def _png(seed: int, color: bool = True) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (12, 12, 3) if color else (12, 12), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def write_shards(folder: Path, shards: int = 2, per_shard: int = 30, classes: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with tarfile.open(folder / f"train-{s:04d}.tar", "w") as tf:
            for i in range(per_shard):
                key = f"sample{s:02d}{i:04d}"
                for name, data in (
                    (f"{key}.png", _png(s * 1000 + i)),
                    (f"{key}.cls", str(i % classes).encode()),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    return folder


def _tar_with(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_webdataset_shards_load_with_their_labels(tmp_path):
    shards = write_shards(tmp_path / "shards")
    data = load_dataset(DatasetSpec(name="webdataset", path=str(shards), image_size=8), 0)
    assert data.num_classes == 3 and data.input_shape == (3, 8, 8)
    assert len(data.train) + len(data.val) + len(data.test) == 60
    size = dataset_size(DatasetSpec(name="webdataset", path=str(shards), image_size=8), 10**9)
    assert size is not None and size.samples == 60  # counted from tar headers


@pytest.mark.parametrize(
    ("members", "words"),
    [
        ({"a.png": _png(0)}, "needs an image and a .cls"),
        ({"a.png": _png(0), "a.cls": b"cat"}, "not an integer"),
        ({"a.png": _png(0), "a.cls": b"-3"}, "out of range"),
        ({"../a.png": _png(0), "../a.cls": b"1"}, "escapes the archive"),
    ],
)
def test_a_malformed_or_hostile_shard_is_refused(tmp_path, members, words):
    shard = _tar_with(tmp_path / "bad.tar", members)
    with pytest.raises(DataError, match=words):
        load_dataset(DatasetSpec(name="webdataset", path=str(shard)), 0)


def test_an_image_folder_on_disk_loads_and_follows_no_links(tmp_path):
    root = tmp_path / "pets"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(10):
            (root / c / f"{i}.png").write_bytes(_png(i + (100 if c == "dog" else 0)))
    outside = tmp_path / "secret.png"
    outside.write_bytes(_png(999))
    (root / "cat" / "link.png").symlink_to(outside)  # would read outside the folder
    (root / "dog" / ".hidden.png").write_bytes(b"not an image")
    spec = DatasetSpec(name="imagefolder", path=str(root), image_size=8, val_fraction=0)
    data = load_dataset(spec, 0)
    assert data.class_names == ["cat", "dog"]
    assert len(data.train) + len(data.test) == 20  # the link and the hidden file skipped
    size = dataset_size(spec, 10**9)
    assert size is not None and size.samples == 20


def test_a_job_trains_on_shards(tmp_path):
    shards = write_shards(tmp_path / "shards")
    report = run(
        {
            "kind": "train",
            "student": {"arch": "small_cnn"},
            "dataset": {"name": "webdataset", "path": str(shards), "image_size": 8},
            "training": {"epochs": 1, "batch_size": 16, "precision": "fp32"},
        },
        tmp_path / "out",
    )
    assert report["dataset"]["name"] == "webdataset" and report["dataset"]["train"] > 0
