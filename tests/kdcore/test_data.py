import gzip
import io
import tarfile
import zipfile
from pathlib import PurePosixPath

import numpy as np
import pytest
import torch
from PIL import Image

from kdcore.errors import DataError
from kdcore.image.data import load_dataset, read_idx
from kdcore.io.archives import iter_archive_files
from kdcore.spec import DatasetSpec


def spec(**kw):
    return DatasetSpec.model_validate(kw)


def _rows(t):
    return {tuple(r.flatten().tolist()) for r in t}


def test_digits_split_is_deterministic_disjoint_and_normalised():
    a = load_dataset(spec(name="digits", image_size=16), seed=3)
    b = load_dataset(spec(name="digits", image_size=16), seed=3)
    c = load_dataset(spec(name="digits", image_size=16), seed=4)
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.test.y, c.test.y)
    assert a.input_shape == (1, 16, 16)
    assert abs(a.train.x.mean().item()) < 1e-3 and abs(a.train.x.std().item() - 1) < 1e-2
    assert len(_rows(a.test.x) & _rows(a.train.x)) < 0.05 * len(a.test)  # only true duplicates


def _write_idx(path, array, gz):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_reads_original_idx_files(tmp_path, gz):
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", 50), ("t10k", 20)):
        _write_idx(
            tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28)), gz
        )
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}", np.arange(n) % 10, gz)
    data = load_dataset(spec(name="fashion_mnist", path=str(tmp_path), val_fraction=0.2), 0)
    assert len(data.test) == 20 and len(data.train) == 40 and len(data.val) == 10
    assert data.input_shape == (1, 28, 28)
    assert data.class_names[9] == "Ankle boot"


def test_truncated_idx_is_a_clear_error(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    _write_idx(path, np.zeros((4, 28, 28)), gz=False)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_missing_fashion_mnist_folder_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        load_dataset(spec(name="fashion_mnist", path=str(tmp_path)), 0)


def test_synthetic_classification_and_regression():
    c = load_dataset(spec(name="synthetic", num_samples=100, num_classes=3, shape=[2, 6, 6]), 0)
    assert c.input_shape == (2, 6, 6) and c.num_classes == 3 and not c.regression
    r = load_dataset(
        spec(name="synthetic", num_samples=100, num_classes=1, shape=[12], regression=True),
        0,
        regression=True,
    )
    assert r.regression and r.train.y.dtype == torch.float32 and r.input_shape == (12,)
    with pytest.raises(DataError, match="does not fit the task"):
        load_dataset(spec(name="synthetic", num_samples=100), 0, regression=True)


def _png(color, size=(10, 10), mode="RGB"):
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_imagefolder_zip_decodes_once_into_tensors(tmp_path):
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(6):
            zf.writestr(f"root/cats/{i}.png", _png((200, 10, 10)))
            zf.writestr(f"root/dogs/{i}.png", _png((10, 10, 200)))
    data = load_dataset(
        spec(
            name="imagefolder",
            path=str(archive),
            image_size=12,
            val_fraction=0.0,
            test_fraction=0.25,
        ),
        0,
    )
    assert data.class_names == ["cats", "dogs"]
    assert data.input_shape == (3, 12, 12)
    assert len(data.train) + len(data.test) == 12


def test_archive_with_dotdot_or_absolute_path_is_refused(tmp_path):
    for name in ("../evil/x.png", "/etc/x.png"):
        archive = tmp_path / "bad.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("ok/a.png", _png((1, 2, 3)))
            zf.writestr(name, _png((1, 2, 3)))
        with pytest.raises(DataError, match="absolute|escapes"):
            list(iter_archive_files(archive))


def test_tar_with_symlink_is_refused(tmp_path):
    archive = tmp_path / "bad.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("cats/link.png")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(DataError, match="link"):
        list(iter_archive_files(archive))


def test_zip_bomb_stops_at_the_unpacked_size_cap(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(5):
            zf.writestr(f"a/{i}.bin", b"\0" * 1_000_000)
    assert archive.stat().st_size < 50_000
    with pytest.raises(DataError, match="unpacks to more than"):
        list(iter_archive_files(archive, max_bytes=3_000_000))
    with pytest.raises(DataError, match="more than 2 files"):
        list(iter_archive_files(archive, max_files=2))


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_a_member_taken_by_a_sink_is_written_chunk_by_chunk_not_held(tmp_path, kind):
    content = np.random.default_rng(0).bytes(3 * 1024**2 + 5)  # several chunks
    archive = tmp_path / f"folder.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("m/weights.bin", content)
            zf.writestr("m/small.txt", b"kept")
    else:
        (tmp_path / "weights.bin").write_bytes(content)
        (tmp_path / "small.txt").write_bytes(b"kept")
        with tarfile.open(archive, "w") as tf:
            tf.add(tmp_path / "weights.bin", "m/weights.bin")
            tf.add(tmp_path / "small.txt", "m/small.txt")
    out = tmp_path / "out.bin"
    got = dict(
        iter_archive_files(archive, sink=lambda rel: out if rel.name == "weights.bin" else None)
    )
    assert got == {PurePosixPath("m/weights.bin"): b"", PurePosixPath("m/small.txt"): b"kept"}
    assert out.read_bytes() == content
    with pytest.raises(DataError, match="unpacks to more than"):  # the caps still hold
        list(iter_archive_files(archive, max_bytes=1024**2, sink=lambda rel: out))


def test_npz_labels_and_regression_targets(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "cls.npz"
    np.savez(path, x=rng.integers(0, 256, (40, 8, 8)).astype(np.uint8), y=np.arange(40) % 4)
    data = load_dataset(spec(name="npz", path=str(path)), 0)
    assert data.input_shape == (1, 8, 8) and data.num_classes == 4
    path = tmp_path / "reg.npz"
    np.savez(path, x=rng.normal(size=(40, 5)), y=rng.normal(size=40))
    data = load_dataset(spec(name="npz", path=str(path)), 0, regression=True)
    assert data.regression and data.input_shape == (5,)


def test_npz_with_object_arrays_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, x=np.array([{"a": 1}] * 10, dtype=object), y=np.arange(10))
    with pytest.raises(DataError, match="holds Python objects, which are refused"):
        load_dataset(spec(name="npz", path=str(path)), 0)


def test_archive_bombs_are_refused_from_their_headers(tmp_path, monkeypatch):
    """A member over the per-member cap, or one that inflates more than 200x, is refused
    from the sizes the zip declares (nothing is inflated)."""
    import zipfile

    from kdcore.io import archives

    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/zeros.png", bytes(20 * 1024**2))  # ~20 KB in the file: ~1000x
        zf.writestr("b/one.png", b"x")
    with pytest.raises(DataError, match="inflates more than 200x"):
        archives.check_archive(bomb)
    monkeypatch.setattr(archives, "MAX_MEMBER_BYTES", 10 * 1024**2)
    with pytest.raises(DataError, match="member unpacks to more than"):
        archives.check_archive(bomb)
    npz = tmp_path / "bomb.npz"
    np.savez_compressed(npz, x=np.zeros((20 * 1024**2 // 4,), np.float32), y=np.zeros(1))
    with pytest.raises(DataError):
        archives.inspect_npz(npz)


def test_rows_are_permuted_in_place_as_indexing_would():
    from kdcore.engine.splits import permute_rows_

    g = torch.Generator().manual_seed(0)
    for n, keep in ((1, 1), (7, 7), (100, 100), (100, 37)):
        x = torch.randn(n, 3, 2, 2, generator=g)
        order = torch.randperm(n, generator=g)[:keep]
        expected = x[order].clone()
        storage = x.untyped_storage().data_ptr()
        out = permute_rows_(x, order)
        assert torch.equal(out, expected)
        assert out.untyped_storage().data_ptr() == storage  # no second copy of the set
