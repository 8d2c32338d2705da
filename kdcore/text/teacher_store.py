"""A causal-LM teacher's top-k outputs over a set's rows, kept compactly: the cache a
`teacher_topk` job trains from, published as its artifact `teacher_outputs.zip`, and
what a later job names as `teacher: {"outputs": ...}` to distil with no teacher model.

The format (docs/language-models.md, "Teacher outputs"), a folder or a zip of it:
- `teacher_outputs.json`: {"format": "kdcore.teacher_outputs", "version": 1, "rows": N,
  "seq_len": L, "k": k, "vocab_size": V, "id_bits": B, "values": "fp16" | "poly3",
  "tokenizer": {"identity": sha256, "source": text}};
- `tokenizer.json`: the tokenizer itself (its identity checked against the description),
  so a job that names the outputs needs no other;
- `tokens.npy`: int32 (N, L), each row's token ids, -1 where the row has none;
- `topk_ids.npy`: uint8 (N, L, ceil(k*B/8)), the k token ids of each position, largest
  first, each in B = bits(V - 1) bits, packed little-endian;
- `topk_values.npy`: float16 (N, L, m), their log-probabilities: all k as they are
  ("fp16", m = k, for k <= 7), or the 3 largest as they are and the rest as the 4
  coefficients of a cubic Legendre series in log rank ("poly3", m = 7; the log rank
  makes the Zipf-like tail nearly straight). Losses renormalise over the k tokens, so
  log-probabilities and logits serve alike.

At k = 64 a position takes 128 bytes of ids (V <= 65,536) or 136 (V <= 131,072) and 14
of values: 142 or 150 bytes per token, against 384 for fp16 values and int32 ids.
Rows are matched by their token ids, not their order: a later job's split may order
them differently, and every training row must be found (else it fails at once)."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdcore.engine.precision import autocast_for
from kdcore.errors import DataError
from kdcore.spec import JobSpec
from kdcore.text.rows import TextRows
from kdcore.text.tokens import TextTokenizer, load_tokenizer

FORMAT, VERSION = "kdcore.teacher_outputs", 1
META, TOKENS, IDS, VALUES = "teacher_outputs.json", "tokens.npy", "topk_ids.npy", "topk_values.npy"
TOKENIZER = "tokenizer.json"
MEMBERS = (META, TOKENIZER, TOKENS, IDS, VALUES)
ARTIFACT = "teacher_outputs.zip"
EXACT_HEAD, DEGREE = 3, 3  # poly3: 3 exact values, then a cubic: 14 bytes for any k
MAX_K = 256
MAX_VOCAB = 1 << 24
MAX_META_BYTES = 64 * 1024
PAD = -1


def id_bits(vocab_size: int) -> int:
    return max(1, (vocab_size - 1).bit_length())


def values_encoding(k: int) -> str:
    return "fp16" if 2 * k <= 2 * (EXACT_HEAD + DEGREE + 1) else "poly3"


def bytes_per_token(k: int, vocab_size: int) -> int:
    width = k if values_encoding(k) == "fp16" else EXACT_HEAD + DEGREE + 1
    return -(-k * id_bits(vocab_size) // 8) + 2 * width


def pack_ids(ids: np.ndarray, bits: int) -> np.ndarray:
    """(..., k) non-negative ids -> (..., ceil(k*bits/8)) uint8, `bits` bits each."""
    k = ids.shape[-1]
    planes = (ids.astype(np.int64)[..., None] >> np.arange(bits)) & 1
    return np.packbits(planes.astype(np.uint8).reshape(*ids.shape[:-1], k * bits), -1, "little")


def unpack_ids(packed: np.ndarray, k: int, bits: int) -> np.ndarray:
    planes = np.unpackbits(packed, axis=-1, count=k * bits, bitorder="little")
    return planes.reshape(*packed.shape[:-1], k, bits).astype(np.int64) @ (1 << np.arange(bits))


def _tail_basis(k: int) -> np.ndarray:
    """(k - EXACT_HEAD, DEGREE + 1): the Legendre series at the tail's log ranks in [-1, 1]."""
    rank = np.arange(1, k - EXACT_HEAD + 1, dtype=np.float64)
    x = 2 * np.log(rank) / np.log(max(k - EXACT_HEAD, 2)) - 1
    return np.polynomial.legendre.legvander(x, DEGREE)


def encode_values(logp: np.ndarray) -> np.ndarray:
    """(..., k) log-probabilities, largest first -> float16 (..., m) of the encoding."""
    k = logp.shape[-1]
    if values_encoding(k) == "fp16":
        return logp.astype(np.float16)
    tail = logp[..., EXACT_HEAD:].astype(np.float64)
    coefficients = tail @ np.linalg.pinv(_tail_basis(k)).T  # least squares, per position
    return np.concatenate([logp[..., :EXACT_HEAD], coefficients], -1).astype(np.float16)


def decode_values(encoded: np.ndarray, k: int) -> np.ndarray:
    if values_encoding(k) == "fp16":
        return encoded.astype(np.float32)
    head = encoded[..., :EXACT_HEAD].astype(np.float32)
    tail = encoded[..., EXACT_HEAD:].astype(np.float64) @ _tail_basis(k).T
    return np.concatenate([head, tail.astype(np.float32)], -1)


def _row_key(tokens: np.ndarray) -> bytes:
    return hashlib.blake2b(
        tokens[tokens != PAD].astype(np.int32).tobytes(), digest_size=16
    ).digest()


def row_tokens(rows: TextRows, first: int, last: int) -> np.ndarray:
    split = rows.rows(torch.arange(first, last))
    ids = split.ids.to(torch.int64).numpy().astype(np.int32)
    return np.where(split.attention.numpy() > 0, ids, PAD)


@dataclass
class TeacherOutputs:
    """An opened store: its description and its arrays, memory-mapped."""

    folder: Path
    meta: dict[str, Any]
    tokens: np.ndarray
    ids: np.ndarray
    values: np.ndarray
    tokenizer: TextTokenizer
    row_of: np.ndarray | None = None  # the store row of each training row, once matched

    @property
    def k(self) -> int:
        return int(self.meta["k"])

    def describe(self) -> dict[str, Any]:
        m = self.meta
        return {
            "rows": m["rows"],
            "k": m["k"],
            "values": m["values"],
            "bytes_per_token": bytes_per_token(m["k"], m["vocab_size"]),
        }

    def match(self, train: TextRows, batch: int = 512) -> None:
        """Find every training row in the store (by its token ids) or fail saying how
        many were found."""
        where: dict[bytes, int] = {}
        for first in range(0, len(self.tokens), 4096):
            block = np.asarray(self.tokens[first : first + 4096])
            for i, row in enumerate(block):
                where.setdefault(_row_key(row), first + i)
        row_of = np.full(len(train), -1, dtype=np.int64)
        for first in range(0, len(train), batch):
            block = row_tokens(train, first, min(first + batch, len(train)))
            for i, row in enumerate(block):
                row_of[first + i] = where.get(_row_key(row), -1)
        missing = int((row_of < 0).sum())
        if missing:
            raise DataError(
                f"the teacher outputs hold {len(train) - missing} of the job's {len(train)} "
                "training rows: they were made from other text, another tokenizer or "
                "another dataset.seq_len (rows are matched by their token ids)"
            )
        self.row_of = row_of

    def __call__(self, idx: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
        """(values float32, ids int64), (B, L, k) each, of these training rows."""
        assert self.row_of is not None, "match() the training rows first"
        rows = self.row_of[idx.numpy()]
        order = np.argsort(rows)
        back = np.argsort(order)
        sorted_rows = rows[order]  # memory maps read fastest in order
        ids = unpack_ids(np.asarray(self.ids[sorted_rows]), self.k, self.meta["id_bits"])[back]
        if ids.size and int(ids.max()) >= self.meta["vocab_size"]:
            raise DataError(
                f"the teacher outputs name token {int(ids.max())}, beyond their vocabulary "
                f"of {self.meta['vocab_size']}"
            )
        values = decode_values(np.asarray(self.values[sorted_rows]), self.k)[back]
        return torch.from_numpy(values).to(device), torch.from_numpy(ids).to(device)


def store_meta(
    rows: int, seq_len: int, k: int, vocab: int, tokenizer: TextTokenizer
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "rows": rows,
        "seq_len": seq_len,
        "k": k,
        "vocab_size": vocab,
        "id_bits": id_bits(vocab),
        "values": values_encoding(k),
        "tokenizer": {"identity": tokenizer.identity(), "source": tokenizer.source},
    }


def complete_store(folder: Path, meta: dict[str, Any]) -> TeacherOutputs | None:
    """The store an earlier attempt finished in `folder` for this same description, or
    None (absent, unfinished, broken or made for other rows)."""
    if not (folder / META).exists():
        return None
    try:
        found = open_store(folder, folder)
    except DataError:
        return None
    return found if found.meta == meta else None


def build_store(
    folder: Path,
    teacher: nn.Module,
    train: TextRows,
    k: int,
    spec: JobSpec,
    device: torch.device,
    tokenizer: TextTokenizer,
) -> TeacherOutputs:
    """The teacher's top-k over every training row, written once into `folder` (a
    resumed job that finds it complete reuses it)."""
    config: Any = teacher.config  # a transformers model: its logits' width
    vocab = int(config.vocab_size)
    meta = store_meta(len(train), train.seq_len, k, vocab, tokenizer)
    found = complete_store(folder, meta)
    if found is not None:
        return found
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    tokenizer.tok.save(str(folder / TOKENIZER))
    n, length = len(train), train.seq_len
    width = bytes_per_token(k, vocab) - -(-k * meta["id_bits"] // 8)
    fmt = np.lib.format
    tokens = fmt.open_memmap(folder / TOKENS, "w+", np.int32, (n, length))
    ids = fmt.open_memmap(folder / IDS, "w+", np.uint8, (n, length, -(-k * meta["id_bits"] // 8)))
    values = fmt.open_memmap(folder / VALUES, "w+", np.float16, (n, length, width // 2))
    teacher.eval()
    size = spec.training.eval_batch_size
    with torch.inference_mode(), autocast_for(device, spec.training.precision):
        for first in range(0, n, size):
            last = min(first + size, n)
            rows = train.rows(torch.arange(first, last))
            logits = teacher(
                input_ids=rows.ids.to(device), attention_mask=rows.attention.to(device)
            ).logits
            logp, top = logits.float().log_softmax(-1).topk(k, dim=-1)
            tokens[first:last] = row_tokens(train, first, last)
            ids[first:last] = pack_ids(top.cpu().numpy(), meta["id_bits"])
            values[first:last] = encode_values(logp.cpu().numpy())
    for array in (tokens, ids, values):
        array.flush()
    (folder / META).write_text(json.dumps(meta, indent=1))  # last: the store is complete
    return open_store(folder, folder)


def write_artifact(store: TeacherOutputs, out_dir: Path) -> Path:
    """The store as one zip (stored, not deflated: the arrays are already dense)."""
    path = out_dir / ARTIFACT
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name in MEMBERS:
            zf.write(store.folder / name, name)
    return path


def _unzip(path: Path, into: Path, max_bytes: int) -> Path:
    """The store's four members of a zip, extracted into `into` (caps checked first)."""
    with zipfile.ZipFile(path) as zf:
        infos = {Path(i.filename).name: i for i in zf.infolist() if not i.is_dir()}
        missing = [m for m in MEMBERS if m not in infos]
        if missing:
            raise DataError(f"teacher outputs lack {', '.join(missing)} (format: {FORMAT})")
        total = sum(infos[m].file_size for m in MEMBERS)
        if total > max_bytes:
            raise DataError(f"teacher outputs unpack to {total} bytes, over {max_bytes}")
        into.mkdir(parents=True, exist_ok=True)
        for name in MEMBERS:
            with zf.open(infos[name]) as src, open(into / name, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    return into


def looks_like_store(path: Path) -> bool:
    """From its listing only: a folder or zip holding the store's description."""
    if path.is_dir():
        return (path / META).is_file()
    try:
        with zipfile.ZipFile(path) as zf:
            return any(Path(n).name == META for n in zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _check_meta(meta: Any) -> dict[str, Any]:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{META} is not of format {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise DataError(
            f"teacher outputs version {meta.get('version')!r}; this kdcore reads {VERSION}"
        )

    def whole(name: str, low: int, high: int) -> int:
        value = meta.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise DataError(f"teacher outputs: {name} must be a whole number in [{low}, {high}]")
        return value

    whole("rows", 1, 1 << 40)
    whole("seq_len", 1, 1 << 20)
    k = whole("k", 1, MAX_K)
    vocab = whole("vocab_size", 2, MAX_VOCAB)
    if k > vocab:
        raise DataError("teacher outputs: k is larger than the vocabulary")
    if meta.get("id_bits") != id_bits(vocab) or meta.get("values") != values_encoding(k):
        raise DataError(
            f"teacher outputs: k {k} and vocabulary {vocab} take id_bits {id_bits(vocab)} "
            f"and values {values_encoding(k)!r}"
        )
    tok = meta.get("tokenizer")
    if not isinstance(tok, dict) or not isinstance(tok.get("identity"), str):
        raise DataError("teacher outputs: tokenizer.identity (the tokenizer's digest) is missing")
    return meta


def _array(path: Path, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    """A plain .npy array of this dtype and shape, memory-mapped (never unpickled)."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"teacher outputs: {path.name} is not a plain .npy array ({exc})") from None
    if not isinstance(array, np.ndarray):  # an .npz (a zip) loads as an archive
        raise DataError(f"teacher outputs: {path.name} is not a plain .npy array")
    if array.dtype != dtype or array.shape != shape:
        raise DataError(
            f"teacher outputs: {path.name} is {array.dtype} {array.shape}; "
            f"its description says {np.dtype(dtype)} {shape}"
        )
    return array


def _tokenizer(path: Path, meta: dict[str, Any]) -> TextTokenizer:
    if not path.is_file():
        raise DataError(f"teacher outputs lack {TOKENIZER} (format {FORMAT})")
    tokenizer = load_tokenizer(path)  # size-capped, parsed, never run
    if tokenizer.identity() != meta["tokenizer"]["identity"]:
        raise DataError(
            f"teacher outputs: {TOKENIZER} is not the tokenizer their description names"
        )
    if tokenizer.vocab_size < meta["vocab_size"]:
        raise DataError("teacher outputs: vocab_size is larger than their tokenizer's")
    return tokenizer


def open_store(path: Path, work_dir: Path, max_bytes: int = 1 << 40) -> TeacherOutputs:
    """A store from a folder or a zip (unpacked into work_dir/teacher_outputs), every
    array's dtype and shape checked against its description; nothing unpickled."""
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise DataError(f"{path.name}: teacher outputs are a folder or a zip ({FORMAT})")
        path = _unzip(path, work_dir / "teacher_outputs", max_bytes)
    if not (path / META).is_file():
        raise DataError(f"{path.name}: no {META} in it (format {FORMAT})")
    if (path / META).stat().st_size > MAX_META_BYTES:
        raise DataError(f"{META} is over {MAX_META_BYTES} bytes")
    try:
        meta = _check_meta(json.loads((path / META).read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"{META} is not JSON") from None
    n, length, k = meta["rows"], meta["seq_len"], meta["k"]
    width = k if meta["values"] == "fp16" else EXACT_HEAD + DEGREE + 1
    return TeacherOutputs(
        path,
        meta,
        _array(path / TOKENS, np.int32, (n, length)),
        _array(path / IDS, np.uint8, (n, length, -(-k * meta["id_bits"] // 8))),
        _array(path / VALUES, np.float16, (n, length, width)),
        _tokenizer(path / TOKENIZER, meta),
    )
