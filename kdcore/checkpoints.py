"""Loading untrusted weights and writing/reading training checkpoints.

Untrusted files are never unpickled: safetensors, `torch.load(weights_only=True)`
(tensors, containers and primitives only) or a TorchScript archive, whose state
dict is copied into a model we build ourselves. Training checkpoints are written
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
from typing import Any

import torch
from torch import Tensor, nn

from kdcore.errors import CheckpointError

STATE_KEYS = ("model", "state_dict", "student", "model_state_dict")


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a flat {name: tensor} dict from an untrusted file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if len(head) < 8:
        raise CheckpointError(f"checkpoint {path.name} is empty or truncated")
    header_len = int.from_bytes(head[:8], "little")
    if head[8:9] == b"{" and 0 < header_len < 100 * 1024**2:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path.name} is not a valid safetensors file: {exc}") from None
    if _is_torchscript(path):
        try:
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        except Exception as exc:  # TorchScript raises several internal error types
            raise CheckpointError(
                f"{path.name} is not a loadable TorchScript file: {exc}"
            ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path.name} was refused: it needs arbitrary Python objects to load, and we only "
            f"load plain tensors (safetensors or a weights-only state dict). Details: "
            f"{str(exc).splitlines()[0]}"
        ) from None
    except Exception as exc:  # garbage input breaks torch.load in many ways (IndexError...)
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path.name} is not a readable checkpoint: {detail}") from None
    return _extract_state_dict(obj, path.name)


def _extract_state_dict(obj: Any, name: str) -> dict[str, Tensor]:
    if isinstance(obj, Mapping):
        for key in STATE_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
        if obj and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
            return dict(obj)
    raise CheckpointError(f"{name} holds no state dict of tensors")


def _strip_prefixes(state: dict[str, Tensor]) -> dict[str, Tensor]:
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load weights into `model`, naming every layer that does not fit."""
    state = _strip_prefixes(read_state_dict(path))
    expected = model.state_dict()
    mismatched = [
        f"{k}: file has {list(v.shape)}, model expects {list(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if mismatched or missing or unexpected:
        lines = []
        if mismatched:
            lines.append("shape mismatch in " + "; ".join(mismatched[:5]))
        if missing:
            lines.append(f"missing layers: {', '.join(missing[:5])}")
        if unexpected:
            lines.append(f"unexpected layers: {', '.join(unexpected[:5])}")
        hint = " (check arch, num_classes and in_channels)"
        raise CheckpointError(
            f"{Path(path).name} does not fit the model: {' | '.join(lines)}{hint}"
        )
    model.load_state_dict(state)


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


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint written by `save_checkpoint` (weights-only unpickling)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"cannot read training checkpoint {path}: {exc}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "step" not in ckpt:
        raise CheckpointError(f"{path} is not a kdcore training checkpoint")
    return ckpt
