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

Rows are split into train/val/test by the seed as images are (kdcore.engine.splits).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kdcore.engine.splits import split_rows
from kdcore.errors import DataError
from kdcore.io.local_files import regular_file
from kdcore.spec import DatasetSpec
from kdcore.text.rows import ROWS_DIR, DiskRows, TextRows, TextSplit, rows_on_disk
from kdcore.text.tokens import TextTokenizer

MAX_TEXT_BYTES = 4 * 1024**3
MAX_RECORD_CHARS = 1_000_000
MAX_ROWS = 5_000_000  # records held in memory; a streamed set may hold more
MAX_STREAMED_RECORDS = 500_000_000
MAX_LINE_CHARS = 2 * MAX_RECORD_CHARS  # a JSONL record's line, with its quoting
PROMPT_BATCH = 1024
# a text set held in memory takes about this many bytes per byte of text (its records,
# their tokens as Python lists, the rows as tensors): auto streaming's estimate
IN_MEMORY_BYTES_PER_TEXT_BYTE = 16
BYTES_PER_HELD_TOKEN = 10  # a padded row in memory: int64 token, two bool masks
MAX_ROWS_FILE_BYTES = 64 * 1024**3  # a streamed set's rows on disk (4 bytes a token)
ENCODE_BATCH = 1024  # records tokenised at once (tokenizers' encode_batch, threaded)
MAX_CLASSES = 10_000
RECORD_KEYS = ({"text"}, {"prompt", "completion"}, {"text", "label"})


@dataclass
class TextData:
    train: TextRows
    val: TextRows
    test: TextRows
    form: str  # "plain", "prompts" or "labelled"
    seq_len: int
    num_classes: int | None = None
    loading: dict[str, Any] | None = None  # report.dataset.loading

    def prompts(self, prompt_tokens: int) -> list[list[int]]:
        """The training rows' prompts for sequence-level KD: a prompt row's prompt, or a
        packed row's first `prompt_tokens` tokens."""
        out = []
        for first in range(0, len(self.train), PROMPT_BATCH):
            batch = self.train.rows(torch.arange(first, min(first + PROMPT_BATCH, len(self.train))))
            for ids, targets, attention in zip(
                batch.ids, batch.targets, batch.attention, strict=True
            ):
                if self.form == "prompts":
                    first_target = (
                        int(targets.nonzero()[0]) if targets.any() else int(attention.sum())
                    )
                    out.append(ids[:first_target].tolist())
                else:
                    out.append(ids[:prompt_tokens].tolist())
        return out


def is_jsonl(path: Path) -> bool:
    """JSONL when the first non-empty line is a JSON object (decided by content, not by
    name: the service stores files without their names)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            # a line is read only up to its cap: a file with no line break is never held
            # whole (iter_records then refuses the line, naming its number)
            for line in iter(lambda: fh.readline(MAX_LINE_CHARS + 1), ""):
                if len(line) > MAX_LINE_CHARS:
                    return line.lstrip().startswith("{")
                if line.strip():
                    return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False
    return False


def iter_records(path: Path, name: str | None = None) -> Iterator[dict[str, Any]]:
    """The records of a .txt (its paragraphs, separated by blank lines, as {"text"}) or a
    .jsonl, one at a time, each checked, a line number in every error. Memory holds one
    record: a line or a paragraph is read only up to its cap."""
    name = name or path.name
    if regular_file(path).stat().st_size > MAX_TEXT_BYTES:
        raise DataError(f"{name} is over {MAX_TEXT_BYTES // 1024**3} GiB")
    jsonl, keys = is_jsonl(path), None
    paragraph: list[str] = []
    size = 0  # the paragraph's characters so far
    try:
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(iter(lambda: fh.readline(MAX_LINE_CHARS + 1), ""), 1):
                if len(line) > MAX_LINE_CHARS:
                    raise DataError(f"{name} line {n} is over {MAX_LINE_CHARS:,} characters")
                if jsonl:
                    if line.strip():
                        record = parse_record(line, name, n, keys)
                        keys = set(record)
                        yield record
                elif line.strip():
                    paragraph.append(line)
                    size += len(line)
                    if size > MAX_RECORD_CHARS:
                        raise DataError(
                            f"{name} line {n}: a paragraph over {MAX_RECORD_CHARS:,} characters "
                            "(documents are separated by a blank line)"
                        )
                elif paragraph:
                    yield {"text": "".join(paragraph).strip()}
                    paragraph, size = [], 0
    except UnicodeDecodeError as exc:
        raise DataError(f"{name} is not UTF-8 text (byte {exc.start} of a line)") from None
    if paragraph:
        yield {"text": "".join(paragraph).strip()}


def record_form(record: dict[str, Any]) -> str:
    return "labelled" if "label" in record else "prompts" if "prompt" in record else "plain"


def text_form(path: Path) -> str:
    """The file's form (plain, prompts or labelled), from its first record."""
    first = next(iter_records(path), None)
    if first is None:
        raise DataError(f"{path.name} holds no records")
    return record_form(first)


def task_form_problem(task: str, form: str) -> str | None:
    """Why a text set of this form ("jsonl" for an embedding job's file, else the first
    record's form) cannot be the task's data, or None. Admission asks before the job is
    queued (kdcore.checks.admit); the loaders ask again, for the library and the CLI."""
    if task == "embedding":
        if form == "jsonl":
            return (
                "task embedding reads plain text, one passage a line; this file is JSONL "
                "records: write each record's text on a line of a .txt file"
            )
        return None
    if task == "text_classification" and form != "labelled":
        return 'text_classification needs JSONL records {"text", "label"}'
    if task == "causal_lm" and form == "labelled":
        return 'causal_lm reads {"text"} or {"prompt", "completion"} records'
    return None


def text_set_problem(task: str, path: Path) -> str | None:
    """task_form_problem for the file at `path`, read only as far as its form: whether an
    embedding job's file is JSONL (its passages are lines, never records), else the
    first record's form. Admission, `kdcore validate` and the passage loader ask this."""
    if task == "embedding":
        return task_form_problem(task, "jsonl" if is_jsonl(path) else "plain")
    return task_form_problem(task, text_form(path))


def read_records(path: Path) -> tuple[str, list[dict[str, Any]]]:
    """(form, records) of a .txt or .jsonl file, held in memory."""
    records: list[dict[str, Any]] = []
    for record in iter_records(path):
        records.append(record)
        if len(records) > MAX_ROWS:
            raise DataError(
                f"{path.name} holds over {MAX_ROWS:,} records to hold in memory: stream it "
                "(dataset.streaming: true)"
            )
    if not records:
        raise DataError(f"{path.name} holds no records")
    return record_form(records[0]), records


def check_text_file(path: Path, name: str | None = None) -> int:
    """Check an uploaded .txt or .jsonl record by record (never held whole): UTF-8, the
    caps, and for JSONL every record's keys and types. Returns the records."""
    count = 0
    for _ in iter_records(path, name):
        count += 1
        if count > MAX_STREAMED_RECORDS:
            break
    if count == 0 or count > MAX_STREAMED_RECORDS:
        raise DataError(f"{name} holds {count:,} records: between 1 and {MAX_STREAMED_RECORDS:,}")
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


def iter_rows(
    form: str, records: Iterable[dict[str, Any]], tokenizer: TextTokenizer, seq_len: int
) -> Iterator[tuple[list[int], int, int]]:
    """Records as rows (tokens, first predicted position, label or -1), tokenised
    `ENCODE_BATCH` records at a time: packed (plain), prompt + completion (prompts), or
    one labelled row each (labelled). Both the in-memory and the streamed path use it."""
    eos, carry = tokenizer.eos_id, []
    it = iter(records)
    while batch := list(itertools.islice(it, ENCODE_BATCH)):
        if form == "plain":
            for ids in tokenizer.encode_batch([r["text"] for r in batch]):
                carry += [*ids, eos]
            whole = len(carry) - len(carry) % seq_len
            for i in range(0, whole, seq_len):
                yield carry[i : i + seq_len], 1, -1
            carry = carry[whole:]
        elif form == "prompts":
            prompts = tokenizer.encode_batch([r["prompt"] for r in batch])
            completions = tokenizer.encode_batch([r["completion"] for r in batch])
            for p, c in zip(prompts, completions, strict=True):
                yield [*p, *c, eos][:seq_len], len(p), -1
        else:
            for ids, r in zip(
                tokenizer.encode_batch([r["text"] for r in batch]), batch, strict=True
            ):
                yield [*ids[: seq_len - 1], eos], 1, r["label"]


def encode(
    form: str, records: Iterable[dict[str, Any]], tokenizer: TextTokenizer, seq_len: int
) -> TextSplit:
    """Every record as rows, in memory (see iter_rows)."""
    rows, starts, labels = [], [], []
    for row, start, label in iter_rows(form, records, tokenizer, seq_len):
        rows.append(row)
        starts.append(start)
        labels.append(label)
    if form == "plain" and len(rows) < 4:
        raise DataError(f"the text makes {len(rows)} rows of seq_len {seq_len}: fewer than 4 rows")
    split = _padded(rows, starts, seq_len, tokenizer.pad_id)
    if form == "labelled":
        split.labels = torch.tensor(labels, dtype=torch.int64)
    return split


def count_lines(path: Path) -> int:
    """Lines of a file (at least its records), counted in chunks: nothing held."""
    count = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            count += chunk.count(b"\n")
    return count + 1


def _rows(
    spec: DatasetSpec, form: str, tokenizer: TextTokenizer, job_dir: Path | None
) -> tuple[TextSplit | DiskRows, dict[str, Any]]:
    """The set's rows and how they were loaded: streamed from disk when `streaming`
    says so, or auto when the set would pass memory_budget_mb held in memory."""
    path = Path(str(spec.path))
    st = path.stat()
    # one row per record (prompts, labelled) is padded to seq_len, whatever its length
    records = 0 if form == "plain" else count_lines(path)  # at most the lines
    padded = records * spec.seq_len
    in_memory = st.st_size * IN_MEMORY_BYTES_PER_TEXT_BYTE + padded * BYTES_PER_HELD_TOKEN
    if job_dir is None or not spec.streams(in_memory):
        rows = encode(form, read_records(path)[1], tokenizer, spec.seq_len)
        return rows, {"path": "in_memory", "rows": len(rows), "estimated_bytes": in_memory}
    if padded * 4 > MAX_ROWS_FILE_BYTES:
        raise DataError(
            f"{records:,} records padded to seq_len {spec.seq_len} would take "
            f"{padded * 4 / 1024**3:.1f} GiB on disk, over {MAX_ROWS_FILE_BYTES // 1024**3} "
            "GiB: a shorter seq_len fits them"
        )
    identity = tokenizer.identity()
    key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "tokenizer": identity}
    folder = job_dir / ROWS_DIR / f"{identity[:16]}-{spec.seq_len}"
    disk = rows_on_disk(
        iter_rows(form, iter_records(path), tokenizer, spec.seq_len),
        {**key, "seq_len": spec.seq_len, "form": form},
        spec.seq_len,
        tokenizer.pad_id,
        folder,
        form == "labelled",
    )
    if form == "plain" and len(disk) < 4:
        raise DataError(
            f"the text makes {len(disk)} rows of seq_len {spec.seq_len}: fewer than 4 rows"
        )
    loading = {"path": "streaming", "rows": len(disk), "files": str(folder.relative_to(job_dir))}
    return disk, loading


def load_text(
    spec: DatasetSpec, task: str, tokenizer: TextTokenizer, seed: int, job_dir: Path | None = None
) -> TextData:
    """The set's rows split into train/val/test; `job_dir` is where a streamed set's
    rows are written (without it, the set is held in memory)."""
    if not spec.path:
        raise DataError("dataset text needs a path: a .txt or .jsonl file")
    form = text_form(Path(spec.path))
    problem = task_form_problem(task, form)
    if problem:
        raise DataError(problem)
    rows, loading = _rows(spec, form, tokenizer, job_dir)
    train, val, test = split_rows(len(rows), spec, seed)
    if len(train) < 2:
        raise DataError("too few rows left to train on")
    classes, labels = None, rows.labels  # read once (a streamed set reads its meta file)
    if labels is not None:
        classes = int(labels.max()) + 1
        if classes < 2:
            raise DataError("text_classification needs at least two labels")
    return TextData(
        rows.split(train), rows.split(val), rows.split(test), form, spec.seq_len, classes, loading
    )


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
