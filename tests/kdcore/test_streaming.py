"""The streaming path (kdcore.image.streaming, kdcore.image.records): the same splits and images as
the in-memory path, chosen by the memory budget, said in the report, resumed mid-epoch
exactly without re-reading, decoded on the device alike; and hostile sets refused."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import kdcore
from kdcore.errors import Cancelled, DataError
from kdcore.image import streaming
from kdcore.image.data import load_dataset
from kdcore.image.records import RecordReader, index_image_folder, index_webdataset
from kdcore.image.streaming import StreamedImages
from kdcore.spec import DatasetSpec
from tests.kdcore.test_image_sources import write_shards
from tests.support.images import write_jpeg_folder
from tests.support.stops import StopBeforeStep

RAW = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}  # pixels in [0, 1], unnormalised


@pytest.fixture(scope="module")
def jpeg_tar(tmp_path_factory) -> Path:
    return write_jpeg_folder(tmp_path_factory.mktemp("set") / "set.tar", 240)


def _spec(path: Path, **over) -> DatasetSpec:
    return DatasetSpec(name="imagefolder", path=str(path), image_size=16, **over)


@pytest.mark.parametrize("form", ["tar", "zip", "dir"])
def test_streamed_splits_hold_the_in_memory_paths_images(tmp_path, form):
    path = write_jpeg_folder(tmp_path / f"set.{form}", 60, form=form)
    if form == "dir":
        path.mkdir(exist_ok=True)
    memory = load_dataset(_spec(path, streaming=False, **RAW), 3)
    streamed = load_dataset(_spec(path, streaming=True, **RAW), 3, data_workers=0)
    assert streamed.streamed and not memory.streamed
    assert streamed.class_names == memory.class_names == ["c0", "c1", "c2", "c3"]
    for name in ("train", "val", "test"):
        a, b = getattr(memory, name), getattr(streamed, name)
        assert isinstance(b.x, StreamedImages) and len(a) == len(b)
        assert a.y.equal(b.y)  # the same rows, in the same order
        images = b.x[torch.arange(len(b))]
        assert images.shape == a.x.shape
        # PIL's resize of uint8 beside torch's of float: the same pictures
        assert (images - a.x).abs().mean() < 0.02


def test_auto_streams_only_a_set_over_the_memory_budget(jpeg_tar):
    # 240 images x 3 x 16 x 16 x 4 bytes = 737 KB decoded
    assert streaming.should_stream(_spec(jpeg_tar), 16) is False
    assert streaming.should_stream(_spec(jpeg_tar, memory_budget_mb=1), 512) is True
    assert streaming.decoded_bytes(240, 16) == 240 * 3 * 16 * 16 * 4
    with pytest.raises(DataError, match="decoded into memory"):
        streaming.should_stream(DatasetSpec(name="digits", streaming=True), 8)


def test_a_streamed_run_trains_and_its_report_says_which_path_ran(tmp_path, jpeg_tar):
    spec = {
        "kind": "train",
        "student": {"arch": "small_cnn"},
        "dataset": {"name": "imagefolder", "path": str(jpeg_tar), "image_size": 16},
        "training": {"epochs": 2, "batch_size": 32, "device": "cpu", "data_workers": 2},
    }
    spec["dataset"]["streaming"] = True
    streamed = kdcore.train(spec, tmp_path / "streamed")
    spec["dataset"]["streaming"] = "auto"  # fits the default budget: in memory
    memory = kdcore.train(spec, tmp_path / "memory")
    loading = streamed["dataset"]["loading"]
    assert loading == {"path": "streaming", "images": 240, "data_workers": 2, "decode": "workers"}
    assert memory["dataset"]["loading"]["path"] == "in_memory"
    assert streamed["student"]["accuracy"] > 0.8  # four colour patterns, learnt


def test_a_streamed_epoch_resumes_at_its_step_exactly_without_re_reading(
    tmp_path, jpeg_tar, monkeypatch
):
    asked: list[list[torch.Tensor]] = []
    batches = StreamedImages.batches

    def recording(self, positions, device):
        if self.crop is None and len(positions) and len(positions[0]) == 16:  # training
            asked.append(list(positions))
        return batches(self, positions, device)

    monkeypatch.setattr(StreamedImages, "batches", recording)
    spec = {
        "kind": "train",
        "student": {"arch": "small_cnn"},
        "dataset": {"name": "imagefolder", "path": str(jpeg_tar), "image_size": 16},
        "augment": {"crop_padding": 2, "hflip": True},
        "training": {"epochs": 2, "batch_size": 16, "device": "cpu", "data_workers": 1},
    }
    spec["dataset"]["streaming"] = True
    straight = kdcore.train(spec, tmp_path / "straight")
    per_epoch = straight["steps"] // 2
    half = per_epoch + 3  # the 4th step of the second epoch
    asked.clear()
    with pytest.raises(Cancelled):
        kdcore.train(spec, tmp_path / "cut", callbacks=StopBeforeStep(half))
    first_run = [p.clone() for p in asked[1]]  # its second epoch, as planned
    asked.clear()
    ckpt = tmp_path / "cut/checkpoints" / f"interrupted-step{half}.pt"
    kdcore.train(spec, tmp_path / "cut", resume_from=ckpt)
    # the resumed epoch asks for its remaining batches only: the same ones, in order
    assert len(asked[0]) == per_epoch - 3
    assert all(a.equal(b) for a, b in zip(asked[0], first_run[3:], strict=True))
    a = load_file(tmp_path / "straight/student.safetensors")
    b = load_file(tmp_path / "cut/student.safetensors")
    assert all(a[k].equal(b[k]) for k in a)


def test_decoding_on_the_device_gives_the_workers_images(jpeg_tar):
    data = load_dataset(_spec(jpeg_tar, streaming=True, **RAW), 0, data_workers=0)
    images = data.train.x
    assert isinstance(images, StreamedImages)
    positions = [torch.arange(0, 20), torch.arange(20, 40)]
    on_workers = torch.cat(list(images.batches(positions, torch.device("cpu"))))
    images.decode_on_device = True
    on_device = torch.cat(list(images.batches(positions, torch.device("cpu"))))
    assert on_device.dtype == torch.uint8 and on_device.shape == on_workers.shape
    diff = (on_device.float() - on_workers.float()).abs().mean()
    assert diff < 6  # two JPEG decoders and resizers, out of 255


def test_webdataset_shards_are_indexed_with_their_labels(tmp_path):
    shards = write_shards(tmp_path / "shards", shards=2, per_shard=10, classes=3)
    records = index_webdataset(shards)
    assert len(records) == 20 and sorted(set(records.labels.tolist())) == [0, 1, 2]
    reader = RecordReader(records)
    assert all(reader.read(i).startswith(b"\x89PNG") for i in range(20))
    data = load_dataset(
        DatasetSpec(name="webdataset", path=str(shards), image_size=8, streaming=True), 0
    )
    assert data.streamed and data.num_classes == 3 and data.input_shape == (3, 8, 8)


def test_the_index_holds_numbers_not_member_objects(tmp_path):
    path = write_jpeg_folder(tmp_path / "set.tar", 300, side=8)
    records = index_image_folder(path)
    held = sum(a.nbytes for a in (records.source, records.offset, records.size, records.labels))
    assert len(records) == 300 and held <= 300 * 28


def _tar(path: Path, members: dict[str, bytes], **kinds: bytes) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in kinds.items():
            info = tarfile.TarInfo(name.replace("__", "/"))
            info.type, info.linkname = tarfile.SYMTYPE, target.decode()
            tf.addfile(info)
    return path


def _hostile(tmp_path: Path, case: str) -> Path:
    one = write_jpeg_folder(tmp_path / "one.tar", 4)
    with tarfile.open(one) as tf:
        good = {m.name: tf.extractfile(m).read() for m in tf if m.isfile()}  # type: ignore[union-attr]
    if case == "gzip":
        path = tmp_path / "set.tar.gz"
        path.write_bytes(gzip.compress(one.read_bytes()))
        return path
    if case == "link":
        return _tar(tmp_path / "x.tar", good, c0__evil_jpg=b"/etc/passwd")
    if case == "dotdot":
        return _tar(tmp_path / "x.tar", {**good, "../c0/x.jpg": b"x"})
    if case == "flat":
        return _tar(tmp_path / "x.tar", {**good, "loose.jpg": b"x"})
    if case == "one_class":
        return _tar(tmp_path / "x.tar", {"c0/a.jpg": next(iter(good.values()))})
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("gzip", "compressed tar"),
        ("link", "is a link"),
        ("dotdot", "escapes the archive"),
        ("flat", "not inside a class folder"),
        ("one_class", "at least two class folders"),
    ],
)
def test_hostile_or_malformed_sets_are_refused_before_training(tmp_path, case, words):
    with pytest.raises(DataError, match=words):
        load_dataset(_spec(_hostile(tmp_path, case), streaming=True), 0)


def test_a_folders_symbolic_links_are_not_followed(tmp_path):
    root = write_jpeg_folder(tmp_path / "set", 8, form="dir")
    secret = tmp_path / "secret.jpg"
    secret.write_bytes((root / "c0/img000000.jpg").read_bytes())
    os.symlink(secret, root / "c1" / "link.jpg")
    records = index_image_folder(root)
    assert len(records) == 8 and not any(Path(s).name == "link.jpg" for s in records.sources)


def test_an_image_changed_after_indexing_or_undecodable_is_a_clear_error(tmp_path):
    root = write_jpeg_folder(tmp_path / "set", 8, form="dir")
    data = load_dataset(_spec(root, streaming=True, **RAW), 0, data_workers=0)
    images = data.train.x
    assert isinstance(images, StreamedImages)
    victim = Path(images.records.sources[int(images.rows[0])])
    victim.write_bytes(victim.read_bytes() + b"more")
    with pytest.raises(DataError, match="changed since the dataset was indexed"):
        images[torch.tensor([0])]
    victim.write_bytes(
        b"not an image" + b"\0" * (int(images.records.size[int(images.rows[0])]) - 12)
    )
    with pytest.raises(DataError, match="cannot decode image"):
        images[torch.tensor([0])]
