"""The teacher's embeddings of every passage, computed once: a float32 array [passages,
width] in the job's folder, filled chunk by chunk with a mask of the rows done (a
stopped or killed job computes only the rest), then kept in the teacher cache (when the
run has one) under a key of everything the values depend on, so a later job on the same
teacher and text reads them instead of running the teacher. Files are written under a
temporary name and renamed, and read memory-mapped with `allow_pickle=False`."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdcore.engine.callbacks import Callbacks, Progress
from kdcore.errors import Cancelled
from kdcore.text.embedding.encoder import encode_batches
from kdcore.text.embedding.passages import Batcher, Passages

VALUES, DONE = "embeddings.npy", "done.npy"
CHUNK = 256  # passages per write (and per progress message)
FORMAT = 1


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def store_key(parts: dict[str, Any]) -> str:
    parts = {**parts, "format": FORMAT, "torch": torch.__version__}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:40]


@dataclass
class EmbeddingStore:
    values: np.ndarray  # [passages, width], memory-mapped
    key: str
    from_cache: bool
    computed: int  # passages the teacher ran for in this process

    def rows(self, ids: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.values[np.asarray(ids)]))

    def describe(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "passages": int(self.values.shape[0]),
            "dimension": int(self.values.shape[1]),
            "bytes": int(self.values.nbytes),
            "from_cache": self.from_cache,
            "computed": self.computed,
        }


def teacher_embeddings(
    teacher: nn.Module,
    every: Passages,
    batcher: Batcher,
    batch_size: int,
    work: Path,
    cache: Path | None,
    key: str,
    device: torch.device,
    callbacks: Callbacks,
) -> EmbeddingStore:
    """Every passage's teacher embedding: from the cache, or computed into `work` (from
    where a stopped run left off) and then offered to the cache."""
    cached = cache / key / VALUES if cache is not None else None
    if cached is not None and cached.is_file():
        values = np.load(cached, mmap_mode="r", allow_pickle=False)
        if values.shape[0] == len(every):
            os.utime(cached.parent)  # recently used: pruned last
            return EmbeddingStore(values, key, True, 0)
    work.mkdir(parents=True, exist_ok=True)
    values, done = _open_work(work, key, len(every), teacher, batcher, device)
    computed = _fill(teacher, every, batcher, batch_size, values, done, work, device, callbacks)
    if cached is not None:
        _offer(work / VALUES, cached)
    return EmbeddingStore(
        np.load(work / VALUES, mmap_mode="r", allow_pickle=False), key, False, computed
    )


def _open_work(
    work: Path, key: str, n: int, teacher: nn.Module, batcher: Batcher, device: torch.device
) -> tuple[np.memmap, np.ndarray]:
    stamp = work / "key.txt"
    if not (stamp.is_file() and stamp.read_text() == key):  # another teacher's: start over
        for name in (VALUES, DONE, "key.txt"):
            (work / name).unlink(missing_ok=True)
    if not (work / VALUES).is_file():
        width = int(encode_batches(teacher, [batcher(["a"])], device).shape[1])
        np.lib.format.open_memmap(work / VALUES, "w+", np.float32, (n, width)).flush()
        np.save(work / DONE, np.zeros(n, dtype=bool), allow_pickle=False)
        stamp.write_text(key)
    values = np.lib.format.open_memmap(work / VALUES, "r+")
    done = np.load(work / DONE, allow_pickle=False)
    return values, done


def _fill(
    teacher: nn.Module,
    every: Passages,
    batcher: Batcher,
    batch_size: int,
    values: np.memmap,
    done: np.ndarray,
    work: Path,
    device: torch.device,
    callbacks: Callbacks,
) -> int:
    todo = np.flatnonzero(~done)
    start, computed = time.perf_counter(), 0
    for first in range(0, len(todo), CHUNK):
        chunk = todo[first : first + CHUNK]
        texts = every.texts(chunk)
        batches = (batcher(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size))
        values[chunk] = encode_batches(teacher, batches, device).numpy()
        values.flush()  # the values before the mask that says they are there
        done[chunk] = True
        tmp = work / f".{DONE}.tmp.npy"
        np.save(tmp, done, allow_pickle=False)
        tmp.replace(work / DONE)
        computed += len(chunk)
        elapsed = time.perf_counter() - start
        callbacks.on_step(
            Progress("generate", 1, 1, int(done.sum()), len(done), 0.0, elapsed_s=elapsed)
        )
        if callbacks.should_stop():
            raise Cancelled(f"stopped while the teacher embedded, {int(done.sum())} done")
    return computed


def _offer(values: Path, cached: Path) -> None:
    """A copy under a temporary name, renamed into the cache (two jobs writing the same
    key each write whole files; the last rename wins, with the same values)."""
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.parent / f".{VALUES}.{os.getpid()}.tmp"
    try:
        shutil.copyfile(values, tmp)
        tmp.replace(cached)
    except OSError:
        tmp.unlink(missing_ok=True)  # a full or pruned cache: the job goes on without it
