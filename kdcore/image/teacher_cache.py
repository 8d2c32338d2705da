"""The teacher's outputs on disk, shared by every epoch and every job that would compute
the same ones.

Two forms, one format:

- **Without augmentation** the teacher sees each training sample once per epoch, the
  same input each time: its outputs for the whole split (N x classes) are computed
  once and kept as `full.*.npy`.
- **With augmentation** (random crops and flips) each step sees new crops, but the
  crops are a function of (seed, step) (kdcore.image.trainer), so a later job with the same
  seed, data, batch size and teacher sees exactly the same crops at the same steps.
  Following FKD (Shen & Xing, "A Fast Knowledge Distillation Framework for Visual
  Recognition", ECCV 2022) and ReLabel (Yun et al., "Re-labeling ImageNet: from Single
  to Multi-Labels, from Global to Localized Labels", CVPR 2021), the teacher's soft
  labels for every crop are stored, one file per epoch (`epochN.*.npy`, step x batch),
  and such a job skips the teacher. FKD stores the crop's coordinates beside its label
  and re-crops from them; here the coordinates are re-derived from (seed, step) by the
  trainer, and the key holds every input of that derivation.

**Top-k soft labels** (`compress`/`expand`): for each sample the k largest logits
(fp16) and their classes, plus one value standing for all the other classes: the
temperature-T log-mean-exp of their logits, so that softmax(expanded / T) gives each
top-k class exactly its probability and the rest together exactly their total mass
(spread evenly). With k = classes (the default up to `FULL_K_UP_TO` classes) it is the
logits rounded to fp16. Live and cached steps both use the expanded values, so a job
that reads the cache trains the same student, bit for bit, as the job that wrote it.

**The key** is a sha256 of everything the outputs depend on: the teacher's weights and
how it runs (fp32 or int8), the training split's tensors, the preprocessing and
augmentation, the seed, batch size, ranks, steps per epoch, k, the temperature where it
shapes the stored values (k below the classes, an ensemble), and the
torch version (kernels differ between releases). Files are written whole under a
temporary name and renamed, and read back memory-mapped with `numpy.load(...,
allow_pickle=False)`: nothing in them can run.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdcore.io.eviction import evict_fairly

FORMAT = 1
FULL_K_UP_TO = 128  # up to this many classes, keep them all (exact up to fp16)
DEFAULT_K = 32  # above it, the top 32 and the rest as one value


def soft_label_k(classes: int, requested: int | None) -> int:
    if requested is not None:
        return min(requested, classes)
    return classes if classes <= FULL_K_UP_TO else DEFAULT_K


def compress(logits: Tensor, k: int, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """(values [n, k + 1] fp16: the top-k logits then the rest's value; indices [n, k])."""
    z = logits.detach().float().cpu()
    top, idx = z.topk(k, dim=1)
    if k < z.shape[1]:
        rest = z.scatter(1, idx, float("-inf")) / temperature
        count = z.shape[1] - k
        other = temperature * (torch.logsumexp(rest, dim=1) - np.log(count))
    else:
        other = torch.zeros(len(z))
    values = torch.cat([top, other[:, None]], dim=1).to(torch.float16).numpy()
    dtype = np.int16 if z.shape[1] <= np.iinfo(np.int16).max else np.int32
    return values, idx.numpy().astype(dtype)


def expand(values: np.ndarray, indices: np.ndarray, classes: int) -> Tensor:
    """The logits `compress` keeps: top-k exact (fp16), every other class the rest's value."""
    v = torch.from_numpy(np.asarray(values, dtype=np.float32))
    idx = torch.from_numpy(np.asarray(indices, dtype=np.int64))
    out = v[:, -1:].expand(len(v), classes).clone()
    return out.scatter(1, idx, v[:, :-1])


def tensor_digest(t: Tensor) -> str:
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_digest(model: nn.Module) -> str:
    """Its state dict's names and tensors, its modules' types, and the graph of any
    module whose weights live outside torch (ONNX teachers: `graph_sha256`)."""
    h = hashlib.sha256()
    for name, module in model.named_modules():
        h.update(
            f"{name}:{type(module).__qualname__}:{getattr(module, 'graph_sha256', '')}".encode()
        )
    for name, value in model.state_dict().items():
        h.update(name.encode())
        if isinstance(value, Tensor):
            h.update(tensor_digest(value).encode())
    return h.hexdigest()


def cache_key(parts: dict[str, Any]) -> str:
    parts = {**parts, "format": FORMAT, "torch": torch.__version__}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:40]


@dataclass
class TeacherStore:
    """One key's folder: whole-split outputs, or per-epoch crop soft labels."""

    root: Path
    key: str
    classes: int
    k: int
    temperature: float
    hits: int = 0  # steps (or whole splits) served from disk
    computed: int = 0  # steps (or whole splits) the teacher ran for
    written: list[str] = field(default_factory=list)

    @property
    def folder(self) -> Path:
        return self.root / self.key

    def _paths(self, name: str) -> tuple[Path, Path]:
        return self.folder / f"{name}.values.npy", self.folder / f"{name}.indices.npy"

    def read(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        values_path, indices_path = self._paths(name)
        if not values_path.exists():  # written last: its presence means both are whole
            return None
        try:
            values = np.load(values_path, mmap_mode="r", allow_pickle=False)
            indices = np.load(indices_path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            return None  # unreadable: computed again and rewritten
        if values.shape[-1] != self.k + 1 or indices.shape[-1] != self.k:
            return None
        os.utime(self.folder)  # recently used: the last to be pruned
        return values, indices

    def write(self, name: str, values: np.ndarray, indices: np.ndarray) -> None:
        """Both arrays under temporary names, then renamed, values last. The cache only
        saves time: a failed write (a full disk, a folder pruned meanwhile) is skipped."""
        values_path, indices_path = self._paths(name)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            for array, path in ((indices, indices_path), (values, values_path)):
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                try:
                    with open(tmp, "wb") as f:
                        np.save(f, array, allow_pickle=False)
                    os.replace(tmp, path)
                finally:
                    tmp.unlink(missing_ok=True)  # gone after the rename; else a leftover
        except OSError:
            return
        self.written.append(name)

    def report(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "k": self.k,
            "classes": self.classes,
            "from_disk": self.hits,
            "computed": self.computed,
            "written": list(self.written),
        }


class EpochLabels:
    """One epoch's crop soft labels: read from the store, or recorded step by step as
    the teacher computes them and written when the epoch is whole."""

    def __init__(self, store: TeacherStore, epoch: int, steps: int, batch: int):
        self.store, self.name, self.steps = store, f"epoch{epoch:04d}", steps
        self.cached = store.read(self.name)
        if self.cached is not None and self.cached[0].shape[:2] != (steps, batch):
            self.cached = None
        self.shape = (steps, batch)
        self.values: np.ndarray | None = None  # allocated when the teacher first runs
        self.indices: np.ndarray | None = None
        self.recorded: set[int] = set()

    def get(self, i: int) -> Tensor | None:
        if self.cached is None:
            return None
        self.store.hits += 1
        return expand(self.cached[0][i], self.cached[1][i], self.store.classes)

    def put(self, i: int, logits: Tensor) -> Tensor:
        values, indices = compress(logits, self.store.k, self.store.temperature)
        if self.values is None or self.indices is None:
            self.values = np.zeros((*self.shape, self.store.k + 1), np.float16)
            self.indices = np.zeros((*self.shape, self.store.k), indices.dtype)
        self.values[i], self.indices[i] = values, indices
        self.recorded.add(i)
        self.store.computed += 1
        return expand(values, indices, self.store.classes)

    def finish(self) -> None:
        """Write the epoch if this process computed every step of it (a run resumed
        mid-epoch did not, and leaves it to a later job)."""
        whole = len(self.recorded) == self.steps
        if self.cached is None and whole and self.values is not None and self.indices is not None:
            self.store.write(self.name, self.values, self.indices)


def prune(roots: list[Path], max_bytes: int) -> list[str]:
    """Delete keys (the folders under `roots`, one root per tenant) until together they
    hold at most `max_bytes`; returns the keys removed. Each root has an equal share of
    the bound: the least recently used key of the root furthest over its share goes
    first, so one tenant filling the cache evicts its own keys, not another's that stay
    within their share. A job still reading a removed key keeps its open memory maps
    (POSIX), and one still writing to it skips the write (`TeacherStore.write`)."""
    keys: dict[Path, list[tuple[float, int, Path]]] = {}
    for root in roots:
        if not root.is_dir():
            continue
        for folder in root.iterdir():
            try:  # another worker may be pruning the same folder right now
                if folder.is_dir():
                    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
                    keys.setdefault(root, []).append((folder.stat().st_mtime, size, folder))
            except OSError:
                continue
    return evict_fairly(keys, max_bytes)
