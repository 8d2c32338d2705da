"""Loading untrusted weights and writing/reading training checkpoints.

Untrusted files never run code: they are read only as safetensors or with
`torch.load(weights_only=True)` (tensors, containers and primitives only). A
TorchScript archive is refused without being opened by TorchScript: loading one runs
the code inside it. Error messages never quote the file's bytes. Training checkpoints are written
atomically (temp file in the same folder, fsync, rename, fsync the folder), so a
crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from kdcore.errors import CheckpointError

V = TypeVar("V")
STATE_KEYS = ("model", "state_dict", "student", "model_state_dict")


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive: a zip holding compiled code (`*/code/*`) or `constants.pkl`.
    Only the names in the zip's directory are read."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    return any("/code/" in n or n.endswith(("constants.pkl", ".debug_pkl")) for n in names)


def _is_export_archive(path: Path) -> bool:
    """A torch.export archive (.pt2): a zip with `archive_format` and a serialized
    program (`models/*.json`, or `serialized_exported_program.json` in older ones)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    return any(
        n.endswith(("archive_format", "serialized_exported_program.json"))
        or ("/models/" in n and n.endswith(".json"))
        for n in names
    )


def looks_like_onnx(head: bytes) -> bool:
    """An ONNX graph's first bytes: its ModelProto opens with ir_version (field 1, a
    small varint: tag 0x08, then 1..20), then a length-delimited field (producer name,
    graph, opset). Recognised without parsing (onnxruntime's side: kdcore.models.onnx)."""
    return len(head) >= 3 and head[0] == 0x08 and 1 <= head[1] <= 20 and head[2] & 0x07 == 2


def _looks_like_safetensors(head: bytes) -> bool:
    header_len = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < header_len < MAX_SAFETENSORS_HEADER


MAX_SAFETENSORS_HEADER = 100 * 1024**2


def looks_like_checkpoint(path: str | Path) -> bool:
    """Whether a file is of a kind kdcore reads as a checkpoint, from its first bytes
    only: safetensors, a zip (a torch.save file, a zipped model folder), a pickle
    (torch's legacy format), a tar (a model folder) or a protobuf that starts as ONNX
    does. What is refused on reading (TorchScript, .pt2, object pickles) passes here."""
    import tarfile

    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
        if len(head) < 8:
            return False
        if _looks_like_safetensors(head) or head[:1] in (b"\x80", b"\x08"):
            return True
        return _is_zip(path) or tarfile.is_tarfile(path)
    except OSError:
        return False


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a flat {name: tensor} dict from an untrusted file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path.name} does not exist")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if len(head) < 8:
        raise CheckpointError(f"checkpoint {path.name} is empty or truncated")
    if _looks_like_safetensors(head):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError):
            raise CheckpointError(f"{path.name} is not a valid safetensors file") from None
    if looks_like_onnx(head):
        raise CheckpointError(
            f"{path.name} opens as an ONNX graph, not weights: give it "
            "as a teacher's checkpoint with no arch, and it runs in onnxruntime"
        )
    if _is_export_archive(path):
        raise CheckpointError(
            f"{path.name} is a torch.export archive (.pt2), which is refused: loading one "
            "rebuilds Python code from the file. Export the model to ONNX instead "
            "(torch.onnx.export) and upload the .onnx as a teacher's checkpoint"
        )
    if _is_torchscript(path):
        raise CheckpointError(
            f"{path.name} is a TorchScript archive, which is refused: loading one runs the "
            "code inside it. Save the weights with safetensors "
            "(safetensors.torch.save_file(model.state_dict(), ...)) or torch.save(state_dict)"
        )
    if not (_is_zip(path) or head[:1] == b"\x80"):  # torch.save writes a zip, or a pickle
        from kdcore.io.accepted_formats import CHECKPOINT_FORMATS

        raise CheckpointError(
            f"{path.name} is not a checkpoint kdcore reads; accepted: {CHECKPOINT_FORMATS}"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path.name} was refused: it needs arbitrary Python objects to load, and we only "
            "load plain tensors (safetensors or a weights-only state dict)"
        ) from None
    except Exception:  # garbage input breaks torch.load in many ways (IndexError...)
        raise CheckpointError(
            f"{path.name} is not a readable checkpoint (expected safetensors or a "
            "torch.save'd state dict)"
        ) from None
    return _extract_state_dict(obj, path.name)


def _is_zip(path: Path) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def _extract_state_dict(obj: Any, name: str) -> dict[str, Tensor]:
    if isinstance(obj, Mapping):
        for key in STATE_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
        if obj and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
            return dict(obj)
    raise CheckpointError(f"{name} holds no state dict of tensors")


def _strip_prefixes(state: dict[str, V]) -> dict[str, V]:
    """Drop a prefix every name shares: DataParallel's `module.`, torch.compile's."""
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def read_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """{name: shape} of an untrusted weights file, without loading its tensors where the
    format allows (a safetensors header; a torch zip is memory-mapped)."""
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(16)
    if len(head) >= 8 and _looks_like_safetensors(head):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:  # type: ignore[no-untyped-call]
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError, RuntimeError):
            raise CheckpointError(f"{path.name} is not a valid safetensors file") from None
    return {k: tuple(v.shape) for k, v in read_state_dict(path).items()}


def _fit_problems(
    shapes: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], name: str
) -> None:
    mismatched = [
        f"{k}: file has {list(v)}, model expects {list(expected[k])}"
        for k, v in shapes.items()
        if k in expected and v != expected[k]
    ]
    missing = [k for k in expected if k not in shapes]
    unexpected = [k[:100] for k in shapes if k not in expected]
    if mismatched or missing or unexpected:
        lines = []
        if mismatched:
            lines.append("shape mismatch in " + "; ".join(mismatched[:5]))
        if missing:
            lines.append(f"missing layers: {', '.join(missing[:5])}")
        if unexpected:
            lines.append(f"unexpected layers: {', '.join(unexpected[:5])}")
        hint = " (check arch, num_classes and in_channels)"
        raise CheckpointError(f"{name} does not fit the model: {' | '.join(lines)}{hint}")


def _outside(head: str | None, names: dict[str, V]) -> dict[str, V]:
    """`names` without the tensors of module `head` (a classifier being reset)."""
    if head is None:
        return names
    return {k: v for k, v in names.items() if not k.startswith(head + ".")}


def check_fit(model: nn.Module, path: str | Path, reset: str | None = None) -> None:
    """Raise CheckpointError naming every layer of the file that does not fit `model`
    (which may live on the meta device: only shapes are compared). With `reset`, the
    tensors of that module (the classifier head) are left out on both sides."""
    fit_shapes(model, read_shapes(path), Path(path).name, reset)


def fit_shapes(
    model: nn.Module, shapes: dict[str, tuple[int, ...]], name: str, reset: str | None = None
) -> None:
    """check_fit for shapes already read (e.g. a safetensors header inside an archive)."""
    expected = _outside(reset, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    _fit_problems(_outside(reset, _strip_prefixes(shapes)), expected, name)


def safetensors_header_shapes(fh: Any, name: str) -> dict[str, tuple[int, ...]]:
    """{tensor: shape} from the header at the start of a safetensors stream; only the
    header is read (capped), never the tensors."""
    import json

    head = fh.read(8)
    length = int.from_bytes(head, "little") if len(head) == 8 else 0
    if not 0 < length < MAX_SAFETENSORS_HEADER:
        raise CheckpointError(f"{name} is not a valid safetensors file")
    try:
        header = json.loads(fh.read(length))
        return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    except (ValueError, TypeError, KeyError, AttributeError):
        raise CheckpointError(f"{name} is not a valid safetensors file") from None


def load_weights(model: nn.Module, path: str | Path, reset: str | None = None) -> None:
    """Load weights into `model`, naming every layer that does not fit. With `reset`,
    that module (the classifier head) keeps its fresh initialisation."""
    state = _outside(reset, _strip_prefixes(read_state_dict(path)))
    expected = _outside(reset, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    _fit_problems({k: tuple(v.shape) for k, v in state.items()}, expected, Path(path).name)
    model.load_state_dict(state, strict=reset is None)


def atomic_write(path: Path, write: Any) -> None:
    """Call `write(file_object)` on a temp file next to `path`, fsync, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    atomic_write(path, lambda fh: torch.save(checkpoint, fh))


def checkpoint_epoch(path: Path) -> int | None:
    """N of a training checkpoint named `epochN.pt`, else None."""
    stem = path.name.removesuffix(".pt")
    if path.suffix != ".pt" or not stem.startswith("epoch") or not stem[5:].isdigit():
        return None
    return int(stem[5:])


def prune_checkpoints(folder: Path, keep: int, protect: frozenset[int] = frozenset()) -> list[Path]:
    """Delete the `epochN.pt` files of `folder` but the newest `keep` and the epochs in
    `protect` (the one a run resumed from); returns what was deleted. Called only after
    the newest file was renamed into place, so a crash anywhere leaves at least `keep`
    whole checkpoints (one more, at worst, until the next save prunes again)."""
    found = sorted(
        (epoch, path)
        for path in folder.glob("epoch*.pt")
        if (epoch := checkpoint_epoch(path)) is not None
    )
    doomed = [path for epoch, path in found[: max(0, len(found) - keep)] if epoch not in protect]
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint written by `save_checkpoint` (weights-only unpickling)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"cannot read training checkpoint {path}: {exc}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "step" not in ckpt:
        raise CheckpointError(f"{path} is not a kdcore training checkpoint")
    return ckpt
