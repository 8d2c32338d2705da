"""Text datasets (`dataset.name: "text"`): a .txt file or a .jsonl of records, tokenised
into fixed-length rows.

- Plain text (a .txt, or JSONL `{"text"}` for causal_lm; a file whose first line is a
  JSON object is JSONL, whatever its name): documents (a .txt's
  paragraphs, separated by blank lines; a JSONL's records) are tokenised, joined with
  the end-of-text token and **packed**: cut into rows of `seq_len` tokens, the last
  partial row dropped. Every next-token prediction counts in the loss.
- Prompts and completions (JSONL `{"prompt", "completion"}`): one row each (not
  packed), the prompt's tokens then the completion's and an end of text, cut to
  `seq_len`, padded. The loss **masks** the prompt and the padding: only the
  completion's tokens are predicted.
- Labelled text (JSONL `{"text", "label"}`, task text_classification): one row each,
  cut to `seq_len`, padded; the label an integer class.

Rows are split into train/val/test by the seed as images are (kdcore.splits).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kdcore.errors import DataError
from kdcore.spec import DatasetSpec
from kdcore.splits import split_rows
from kdcore.text.tokens import TextTokenizer

MAX_TEXT_BYTES = 4 * 1024**3
MAX_RECORD_CHARS = 1_000_000
MAX_ROWS = 5_000_000
MAX_CLASSES = 10_000
RECORD_KEYS = ({"text"}, {"prompt", "completion"}, {"text", "label"})


@dataclass
class TextSplit:
    ids: Tensor  # (N, L) int64 tokens
    attention: Tensor  # (N, L) bool: a real token, not padding
    targets: Tensor  # (N, L) bool: token t is predicted (counts in the LM loss)
    labels: Tensor | None = None  # (N,) int64 for text_classification

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def rows(self, idx: Tensor) -> TextSplit:
        labels = self.labels[idx] if self.labels is not None else None
        return TextSplit(self.ids[idx], self.attention[idx], self.targets[idx], labels)

    def tokens(self) -> int:
        """The predicted tokens (a causal LM's perplexity is over these)."""
        return int(self.targets[:, 1:].sum())


@dataclass
class TextData:
    train: TextSplit
    val: TextSplit
    test: TextSplit
    form: str  # "plain", "prompts" or "labelled"
    seq_len: int
    num_classes: int | None = None

    def prompts(self, prompt_tokens: int) -> list[list[int]]:
        """The training rows' prompts for sequence-level KD: a prompt row's prompt, or a
        packed row's first `prompt_tokens` tokens."""
        out = []
        for ids, targets, attention in zip(
            self.train.ids, self.train.targets, self.train.attention, strict=True
        ):
            if self.form == "prompts":
                first = int(targets.nonzero()[0]) if targets.any() else int(attention.sum())
                out.append(ids[:first].tolist())
            else:
                out.append(ids[:prompt_tokens].tolist())
        return out


def is_jsonl(path: Path) -> bool:
    """JSONL when the first non-empty line is a JSON object (decided by content, not by
    name: the service stores files without their names)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.strip():
                    return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False
    return False


def read_records(path: Path) -> tuple[str, list[dict[str, Any]]]:
    """(form, records) of a .txt or .jsonl file, with a line number in every error."""
    if path.stat().st_size > MAX_TEXT_BYTES:
        raise DataError(f"{path.name} is over {MAX_TEXT_BYTES // 1024**3} GiB")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path.name} is not UTF-8 text (byte {exc.start})") from None
    if not is_jsonl(path):
        docs = [d.strip() for d in text.split("\n\n")]
        return "plain", [{"text": d} for d in docs if d]
    records: list[dict[str, Any]] = []
    keys: set[str] | None = None
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            records.append(parse_record(line, path.name, n, keys))
            keys = set(records[-1])
        if len(records) > MAX_ROWS:
            raise DataError(f"{path.name} holds over {MAX_ROWS:,} records")
    if not records:
        raise DataError(f"{path.name} holds no records")
    form = "labelled" if "label" in records[0] else "prompts" if "prompt" in records[0] else "plain"
    return form, records


def check_text_file(path: Path, name: str) -> int:
    """Check an uploaded .txt or .jsonl line by line (never held whole): UTF-8, the
    caps, and for JSONL every record's keys and types. Returns the records (or lines)."""
    if path.stat().st_size > MAX_TEXT_BYTES:
        raise DataError(f"{name} is over {MAX_TEXT_BYTES // 1024**3} GiB")
    jsonl, count = is_jsonl(path), 0
    keys: set[str] | None = None
    try:
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if len(line) > MAX_RECORD_CHARS * 2:
                    raise DataError(f"{name} line {n} is over {MAX_RECORD_CHARS * 2:,} characters")
                if not jsonl or not line.strip():
                    count += bool(line.strip())
                    continue
                keys = set(parse_record(line, name, n, keys))
                count += 1
    except UnicodeDecodeError as exc:
        raise DataError(f"{name} is not UTF-8 text (byte {exc.start} of a line)") from None
    if count == 0 or count > MAX_ROWS:
        raise DataError(f"{name} holds {count:,} records: between 1 and {MAX_ROWS:,}")
    return count


def parse_record(line: str, name: str, n: int, keys: set[str] | None) -> dict[str, Any]:
    """One JSONL line as a record, checked: its keys (those of line 1 too) and types."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{name} line {n}: not JSON ({exc.msg})") from None
    if not isinstance(record, dict) or set(record) not in RECORD_KEYS:
        got = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise DataError(
            f'{name} line {n}: a record is {{"text"}}, {{"prompt", "completion"}} '
            f'or {{"text", "label"}}; got {got}'
        )
    if keys is not None and set(record) != keys:
        raise DataError(f"{name} line {n}: every record needs the same keys as line 1")
    _check_record(record, name, n)
    return record


def _check_record(record: dict[str, Any], name: str, n: int) -> None:
    for key, value in record.items():
        if key == "label":
            if (
                not isinstance(value, int)
                or isinstance(value, bool)
                or not 0 <= value < MAX_CLASSES
            ):
                raise DataError(f"{name} line {n}: label must be an integer in [0, {MAX_CLASSES})")
        elif not isinstance(value, str):
            raise DataError(f"{name} line {n}: {key} must be a string")
        elif len(value) > MAX_RECORD_CHARS:
            raise DataError(f"{name} line {n}: {key} is over {MAX_RECORD_CHARS:,} characters")


def _padded(rows: list[list[int]], starts: list[int], seq_len: int, pad: int) -> TextSplit:
    """Rows cut to seq_len and padded; targets from each row's `starts` (the first
    predicted token) to its end."""
    n = len(rows)
    ids = torch.full((n, seq_len), pad, dtype=torch.int64)
    attention = torch.zeros((n, seq_len), dtype=torch.bool)
    targets = torch.zeros((n, seq_len), dtype=torch.bool)
    for i, (row, start) in enumerate(zip(rows, starts, strict=True)):
        row = row[:seq_len]
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.int64)
        attention[i, : len(row)] = True
        targets[i, max(1, start) : len(row)] = True
    return TextSplit(ids, attention, targets)


def encode(
    form: str, records: list[dict[str, Any]], tokenizer: TextTokenizer, seq_len: int
) -> TextSplit:
    """Every record as rows: packed (plain), prompt + completion (prompts), or one
    labelled row each (labelled)."""
    eos = tokenizer.eos_id
    if form == "plain":
        stream: list[int] = []
        for r in records:
            stream += tokenizer.encode(r["text"]) + [eos]
        count = len(stream) // seq_len
        if count < 4:
            raise DataError(
                f"the text makes {len(stream)} tokens: fewer than 4 rows of seq_len {seq_len}"
            )
        ids = torch.tensor(stream[: count * seq_len], dtype=torch.int64).view(count, seq_len)
        every = torch.ones_like(ids, dtype=torch.bool)
        return TextSplit(ids, every, every.clone())
    if form == "prompts":
        prompts = [tokenizer.encode(r["prompt"]) for r in records]
        rows = [
            p + tokenizer.encode(r["completion"]) + [eos]
            for p, r in zip(prompts, records, strict=True)
        ]
        return _padded(rows, [len(p) for p in prompts], seq_len, tokenizer.pad_id)
    rows = [tokenizer.encode(r["text"])[: seq_len - 1] + [eos] for r in records]
    split = _padded(rows, [1] * len(rows), seq_len, tokenizer.pad_id)
    split.labels = torch.tensor([r["label"] for r in records], dtype=torch.int64)
    return split


def load_text(spec: DatasetSpec, task: str, tokenizer: TextTokenizer, seed: int) -> TextData:
    if not spec.path:
        raise DataError("dataset text needs a path: a .txt or .jsonl file")
    form, records = read_records(Path(spec.path))
    if task == "text_classification" and form != "labelled":
        raise DataError('text_classification needs JSONL records {"text", "label"}')
    if task == "causal_lm" and form == "labelled":
        raise DataError('causal_lm reads {"text"} or {"prompt", "completion"} records')
    rows = encode(form, records, tokenizer, spec.seq_len)
    train, val, test = split_rows(len(rows), spec, seed)
    if len(train) < 2:
        raise DataError("too few rows left to train on")
    classes = None
    if rows.labels is not None:
        classes = int(rows.labels.max()) + 1
        if classes < 2:
            raise DataError("text_classification needs at least two labels")
    return TextData(rows.rows(train), rows.rows(val), rows.rows(test), form, spec.seq_len, classes)


def completion_rows(
    prompts: list[list[int]],
    completions: list[list[int]],
    tokenizer: TextTokenizer,
    seq_len: int,
    packed: bool,
) -> TextSplit:
    """Sequence-level KD's training rows, in the form of the job's own data. Prompts and
    completions: each prompt and the teacher's completion, the loss on the completion
    only. Packed text: a row's opening continued by the teacher through ends of text, as
    a packed row runs on; every prediction counts, as in packed rows."""
    if packed:
        rows = [p + c for p, c in zip(prompts, completions, strict=True)]
        return _padded(rows, [1] * len(rows), seq_len, tokenizer.pad_id)
    rows = [p + c + [tokenizer.eos_id] for p, c in zip(prompts, completions, strict=True)]
    return _padded(rows, [len(p) for p in prompts], seq_len, tokenizer.pad_id)
