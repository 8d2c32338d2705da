"""A text set's rows: in memory (`TextSplit`, tensors) or streamed from disk
(`DiskRows`, `dataset.streaming` for text). Training and evaluation see one shape
(`TextRows`): a length, `rows(idx)` giving a batch as a TextSplit, the predicted tokens.

On disk, a set is written once to the job folder as fixed-width rows:
`text_rows/<tokenizer>-<seq_len>/rows.i32` (N x seq_len int32 tokens, padded) and
`meta.i32` (N x 3 int32: real tokens, first predicted position, label or -1), from the
rows kdcore.text.data makes for the in-memory path (the same rows). Each batch's rows
are read from the memory-mapped files when it is asked for, so memory holds a batch of
records while writing and a batch of rows while training, whatever the set's size. The
files are reused while their key holds (the source's size and modification time, the
tokenizer, seq_len): a resumed job does not tokenise again. Under data-parallel ranks,
rank 0 writes them and the others wait, then read."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from kdcore.errors import DataError

ROWS_DIR = "text_rows"
WRITE_ROWS = 4096  # rows gathered before a write


@dataclass
class TextSplit:
    ids: Tensor  # (N, L) int64 tokens
    attention: Tensor  # (N, L) bool: a real token, not padding
    targets: Tensor  # (N, L) bool: token t is predicted (counts in the LM loss)
    labels: Tensor | None = None  # (N,) int64 for text_classification

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.ids.shape[1])

    def rows(self, idx: Tensor) -> TextSplit:
        labels = self.labels[idx] if self.labels is not None else None
        return TextSplit(self.ids[idx], self.attention[idx], self.targets[idx], labels)

    def split(self, index: Tensor) -> TextSplit:
        """A split of a set held in memory: its rows (DiskRows keeps an index instead)."""
        return self.rows(index)

    def tokens(self) -> int:
        """The predicted tokens (a causal LM's perplexity is over these)."""
        return int(self.targets[:, 1:].sum())

    def real_tokens(self) -> int:
        return int(self.attention.sum())


class TextRows(Protocol):
    """What training and evaluation need of a split, in memory or on disk."""

    def __len__(self) -> int: ...

    @property
    def seq_len(self) -> int: ...

    @property
    def labels(self) -> Tensor | None: ...

    def rows(self, idx: Tensor) -> TextSplit: ...

    def tokens(self) -> int: ...

    def real_tokens(self) -> int: ...


@dataclass
class DiskRows:
    """A split of a set's rows on disk, each batch read when it is asked for."""

    ids: np.ndarray  # (N, L) int32, memory-mapped: every row of the set
    meta: np.ndarray  # (N, 3) int32, memory-mapped: length, first predicted, label
    index: np.ndarray  # (n,) int64: this split's rows
    labelled: bool

    def __len__(self) -> int:
        return len(self.index)

    @property
    def seq_len(self) -> int:
        return int(self.ids.shape[1])

    def rows(self, idx: Tensor) -> TextSplit:
        rows = self.index[idx.numpy()]
        ids = torch.from_numpy(self.ids[rows].astype(np.int64))
        meta = torch.from_numpy(self.meta[rows].astype(np.int64))
        position = torch.arange(self.seq_len)
        attention = position < meta[:, 0:1]
        targets = (position >= meta[:, 1:2].clamp(min=1)) & attention
        return TextSplit(ids, attention, targets, meta[:, 2] if self.labelled else None)

    def tokens(self) -> int:
        meta = self.meta[self.index].astype(np.int64)
        return int(np.clip(meta[:, 0] - np.maximum(meta[:, 1], 1), 0, None).sum())

    def real_tokens(self) -> int:
        return int(self.meta[self.index, 0].astype(np.int64).sum())

    @property
    def labels(self) -> Tensor | None:
        if not self.labelled:
            return None
        return torch.from_numpy(self.meta[self.index, 2].astype(np.int64))

    def split(self, index: Tensor) -> DiskRows:
        return DiskRows(self.ids, self.meta, self.index[index.numpy()], self.labelled)


Row = tuple[list[int], int, int]  # tokens, first predicted position, label or -1


def _write(rows: Iterator[Row], seq_len: int, pad: int, folder: Path) -> int:
    count, ids, meta = 0, [], []
    with open(folder / "rows.i32", "wb") as ids_file, open(folder / "meta.i32", "wb") as meta_file:
        for row, start, label in rows:
            ids.append(row + [pad] * (seq_len - len(row)))
            meta.append((len(row), start, label))
            if len(ids) == WRITE_ROWS:
                ids_file.write(np.asarray(ids, dtype=np.int32).tobytes())
                meta_file.write(np.asarray(meta, dtype=np.int32).tobytes())
                count, ids, meta = count + len(ids), [], []
        if ids:
            ids_file.write(np.asarray(ids, dtype=np.int32).tobytes())
            meta_file.write(np.asarray(meta, dtype=np.int32).tobytes())
            count += len(ids)
    return count


def rows_on_disk(
    rows: Iterator[Row], key: dict[str, Any], seq_len: int, pad: int, folder: Path, labelled: bool
) -> DiskRows:
    """The set's rows, written to `folder` unless its files for `key` are there."""
    done = folder / "rows.json"
    ranks = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if ranks else 0
    if rank != 0:
        torch.distributed.barrier()  # rank 0 writes; the others read its finished files
    elif not done.exists() or json.loads(done.read_text()).get("key") != key:
        folder.mkdir(parents=True, exist_ok=True)
        done.unlink(missing_ok=True)
        done_rows = _write(rows, seq_len, pad, folder)
        done.write_text(json.dumps({"key": key, "rows": done_rows}))
    if ranks and rank == 0:
        torch.distributed.barrier()
    count = int(json.loads(done.read_text())["rows"])
    if count == 0:
        raise DataError(f"the text makes no rows of seq_len {seq_len}")
    ids = np.memmap(folder / "rows.i32", dtype=np.int32, mode="r", shape=(count, seq_len))
    meta = np.memmap(folder / "meta.i32", dtype=np.int32, mode="r", shape=(count, 3))
    return DiskRows(ids, meta, np.arange(count), labelled)
