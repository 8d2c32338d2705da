import pickle

import pytest
import torch
from safetensors.torch import save_file

from kdcore.errors import CheckpointError
from kdcore.io.checkpoints import atomic_write, load_weights, read_state_dict
from kdcore.models import build_model
from tests.support.exploits import PickleExploit


def _model(classes=10):
    return build_model("small_cnn", classes, (1, 8, 8))


def test_safetensors_and_weights_only_pickle_load(tmp_path):
    src = _model()
    save_file(src.state_dict(), tmp_path / "w.safetensors")
    torch.save({"model": src.state_dict(), "epoch": 3}, tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        dst = _model()
        load_weights(dst, tmp_path / name)
        for k, v in src.state_dict().items():
            assert torch.equal(v, dst.state_dict()[k])


def test_torchscript_archive_is_refused_without_being_loaded(tmp_path, monkeypatch):
    src = _model().eval()
    torch.jit.save(torch.jit.trace(src, torch.randn(1, 1, 8, 8)), tmp_path / "m.pt")

    def never(*args, **kwargs):
        raise AssertionError("torch.jit.load ran on an untrusted file")

    monkeypatch.setattr(torch.jit, "load", never)
    with pytest.raises(CheckpointError, match="TorchScript archive, which is refused"):
        load_weights(_model(), tmp_path / "m.pt")
    # renamed folders inside the zip do not get it past the check: the weights-only
    # unpickler refuses TorchScript's classes
    import zipfile

    with zipfile.ZipFile(tmp_path / "m.pt") as zin, zipfile.ZipFile(tmp_path / "n.pt", "w") as zout:
        for info in zin.infolist():
            name = info.filename.replace("/code/", "/cod3/").replace("constants.pkl", "c.pkl")
            zout.writestr(name, zin.read(info))
    with pytest.raises(CheckpointError):
        read_state_dict(tmp_path / "n.pt")


def test_error_messages_never_quote_the_file(tmp_path):
    secret = "kd_SECRET_TOKEN_abc123"
    for name, blob in {
        "a.safetensors": (40).to_bytes(8, "little") + b'{"' + secret.encode() + b'": 1}' * 3,
        "b.pt": b"\x80\x02c" + secret.encode() + b"\nsystem\n.",
        "c.pt": b"PK\x03\x04" + secret.encode() * 10,
    }.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(CheckpointError) as info:
            read_state_dict(tmp_path / name)
        assert secret not in str(info.value)


def test_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": PickleExploit(marker)}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_weights(_model(), path)
    assert not marker.exists()
    # a raw pickle (not a torch zip) is refused the same way
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(PickleExploit(marker)))
    with pytest.raises(CheckpointError):
        read_state_dict(raw)
    assert not marker.exists()


def test_shape_mismatch_names_the_layer(tmp_path):
    save_file(_model(classes=100).state_dict(), tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match=r"fc\.weight: file has \[100, 64\]"):
        load_weights(_model(classes=10), tmp_path / "w.safetensors")


def test_other_architecture_lists_missing_layers(tmp_path):
    save_file(build_model("mlp", 10, (1, 8, 8)).state_dict(), tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match="missing layers: stage1"):
        load_weights(_model(), tmp_path / "w.safetensors")


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(_model().state_dict(), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_weights(_model(), path)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_write(path, lambda fh: fh.write(b"old"))

    def half_then_fail(fh):
        fh.write(b"new-but-incomplete")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_bytes_that_only_open_like_onnx_are_refused_as_weights_without_parsing(tmp_path):
    """io recognises ONNX by its first bytes (it imports no model code): a file that
    merely opens like a ModelProto is refused, never loaded, and the message hedges."""
    import pytest

    from kdcore.errors import CheckpointError
    from kdcore.io.checkpoints import looks_like_onnx, read_state_dict

    fake = tmp_path / "teacher.pt"
    fake.write_bytes(b"\x08\x07\x12\x04junk" + b"\x00" * 64)
    assert looks_like_onnx(fake.read_bytes()[:16])
    assert not looks_like_onnx(b"\x08\x00\x12") and not looks_like_onnx(b"PK\x03\x04")
    with pytest.raises(CheckpointError, match="opens as an ONNX graph"):
        read_state_dict(fake)
