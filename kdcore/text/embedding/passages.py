"""Unlabelled text for an embedding job: one passage per line of a UTF-8 file, streamed.
The file is read once for the byte offset of each non-empty line (8 bytes a passage);
a batch reads its lines from the file by offset, so a set of any size takes the same
memory. Splits are a seeded shuffle of the lines; tokens are cut at the model's
longest input, with the tokenizer's own [CLS]/[SEP] framing."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from kdcore.errors import DataError
from kdcore.io.local_files import regular_file
from kdcore.text.data import (
    MAX_LINE_CHARS,
    MAX_STREAMED_RECORDS,
    MAX_TEXT_BYTES,
    text_set_problem,
)
from kdcore.text.tokens import TextTokenizer

MAX_PASSAGE_BYTES = MAX_LINE_CHARS


@dataclass
class Passages:
    """A split: the file's lines at `offsets` (passage ids are positions in the file's
    whole index, so the teacher's store serves every split)."""

    path: Path
    ids: np.ndarray  # int64 positions in the whole index
    offsets: np.ndarray  # the whole index: byte offset of each passage

    def __len__(self) -> int:
        return len(self.ids)

    def texts(self, positions: np.ndarray | Tensor) -> list[str]:
        out = []
        with self.path.open("rb") as fh:
            for p in np.asarray(positions, dtype=np.int64):
                fh.seek(int(self.offsets[self.ids[p]]))
                raw = fh.readline(MAX_PASSAGE_BYTES + 1)
                try:
                    out.append(raw.decode("utf-8").strip())
                except UnicodeDecodeError:
                    line = int(self.ids[p]) + 1
                    raise DataError(f"{self.path.name}: passage {line} is not UTF-8") from None
        return out

    def head(self, n: int) -> Passages:
        return Passages(self.path, self.ids[:n], self.offsets)


@dataclass
class PassageSet:
    train: Passages
    val: Passages
    test: Passages
    sha256: str  # of the file: the teacher store's key
    total: int


def index_passages(path: Path, max_samples: int | None) -> tuple[np.ndarray, str]:
    """The byte offsets of the non-empty lines (the first max_samples of them) and the
    file's sha256, in one pass."""
    f = regular_file(path)
    if f.stat().st_size > MAX_TEXT_BYTES:
        raise DataError(f"{path.name} is over {MAX_TEXT_BYTES // 1024**3} GiB")
    digest, at = hashlib.sha256(), 0
    offsets: list[int] = []
    with f.open("rb") as fh:
        for n, line in enumerate(iter(lambda: fh.readline(MAX_PASSAGE_BYTES + 1), b""), 1):
            if len(line) > MAX_PASSAGE_BYTES:
                raise DataError(f"{path.name} line {n} is over {MAX_PASSAGE_BYTES:,} bytes")
            digest.update(line)
            if line.strip() and (max_samples is None or len(offsets) < max_samples):
                offsets.append(at)
            at += len(line)
            if len(offsets) > MAX_STREAMED_RECORDS:
                raise DataError(f"{path.name} holds over {MAX_STREAMED_RECORDS:,} passages")
    if len(offsets) < 30:
        raise DataError(f"{path.name} holds {len(offsets)} passages: an embedding job needs 30")
    return np.asarray(offsets, dtype=np.int64), digest.hexdigest()


def load_passages(
    path: Path, val_fraction: float, test_fraction: float, seed: int, max_samples: int | None
) -> PassageSet:
    problem = text_set_problem("embedding", path)
    if problem:
        raise DataError(problem)
    offsets, sha = index_passages(path, max_samples)
    n = len(offsets)
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(11, round(n * test_fraction))  # top-10 neighbours need 11 passages
    n_val = round(n * val_fraction)
    if n - n_test - n_val < 1:
        raise DataError(f"{path.name}: {n} passages leave none to train on")
    test, val, train = np.split(order, [n_test, n_test + n_val])
    return PassageSet(
        Passages(path, np.sort(train), offsets),
        Passages(path, np.sort(val), offsets),
        Passages(path, np.sort(test), offsets),
        sha,
        n,
    )


class Batcher:
    """Texts to padded (ids, attention mask) at most `max_len` tokens each, framed by the
    tokenizer's post-processor ([CLS] ... [SEP] for a BERT)."""

    def __init__(self, tok: TextTokenizer, max_len: int):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_str(tok.tok.to_str())  # its own truncation, not the job's
        self.tok.enable_truncation(max_len)
        self.pad_id, self.max_len = tok.pad_id, max_len

    def __call__(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        encoded = self.tok.encode_batch(texts, add_special_tokens=True)
        width = max(1, max(len(e.ids) for e in encoded))
        ids = torch.full((len(texts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(texts), width), dtype=torch.long)
        for i, e in enumerate(encoded):
            ids[i, : len(e.ids)] = torch.tensor(e.ids, dtype=torch.long)
            mask[i, : len(e.ids)] = 1
        return ids, mask

    def batches(self, split: Passages, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, len(split), batch_size):
            yield self(split.texts(np.arange(start, min(start + batch_size, len(split)))))
