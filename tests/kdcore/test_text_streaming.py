"""Text sets streamed from disk (kdcore.text.rows): the same rows as the in-memory path
in every form, written once and reused, training that matches the in-memory path step
for step, peak memory that does not grow with the corpus; and hostile files refused
without being read whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kdcore
from kdcore.errors import DataError
from kdcore.spec import DatasetSpec
from kdcore.text.data import check_text_file, load_text
from kdcore.text.tokens import load_tokenizer
from tests.support.memory import refusal_and_growth
from tests.support.text import (
    GPT2_STUDENT,
    train_tokenizer,
    write_corpus,
    write_labelled,
    write_prompts,
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tok")
    return train_tokenizer(write_corpus(tmp / "c.txt", documents=200), tmp / "tokenizer.json")


def _sets(tmp: Path) -> dict[str, tuple[Path, str]]:
    return {
        "plain": (write_corpus(tmp / "plain.txt", documents=150, seed=3), "causal_lm"),
        "prompts": (write_prompts(tmp / "prompts.jsonl", count=120), "causal_lm"),
        "labelled": (write_labelled(tmp / "labelled.jsonl", count=120), "text_classification"),
    }


def _load(path: Path, task: str, tokenizer: Path, job_dir: Path | None, **over):
    spec = DatasetSpec(name="text", path=str(path), seq_len=24, **over)
    return load_text(spec, task, load_tokenizer(tokenizer), 0, job_dir)


@pytest.mark.parametrize("form", ["plain", "prompts", "labelled"])
def test_streamed_rows_are_the_in_memory_rows(tokenizer, tmp_path, form):
    path, task = _sets(tmp_path)[form]
    memory = _load(path, task, tokenizer, tmp_path / "job", streaming=False)
    disk = _load(path, task, tokenizer, tmp_path / "job", streaming=True)
    assert memory.loading["path"] == "in_memory" and disk.loading["path"] == "streaming"
    assert disk.form == memory.form == form
    for mine, theirs in ((disk.train, memory.train), (disk.val, memory.val)):
        assert len(mine) == len(theirs) > 0
        assert mine.tokens() == theirs.tokens() and mine.real_tokens() == theirs.real_tokens()
        idx = torch.randperm(len(theirs))[:7]  # any batch, in any order
        a, b = mine.rows(idx), theirs.rows(idx)
        assert a.ids.equal(b.ids) and a.attention.equal(b.attention)
        assert a.targets.equal(b.targets)
        assert (a.labels is None and b.labels is None) or a.labels.equal(b.labels)
    assert (disk.train.labels is None) == (form != "labelled")


def test_rows_are_written_once_and_again_when_the_text_changes(tokenizer, tmp_path):
    path = write_corpus(tmp_path / "c.txt", documents=100, seed=4)
    job = tmp_path / "job"
    first = _load(path, "causal_lm", tokenizer, job, streaming=True)
    rows_file = job / first.loading["files"] / "rows.i32"
    written = rows_file.stat().st_mtime_ns
    again = _load(path, "causal_lm", tokenizer, job, streaming=True)  # a resumed job
    assert rows_file.stat().st_mtime_ns == written
    assert again.train.rows(torch.arange(3)).ids.equal(first.train.rows(torch.arange(3)).ids)
    write_corpus(path, documents=300, seed=9)  # another text at the same path
    changed = _load(path, "causal_lm", tokenizer, job, streaming=True)
    assert rows_file.stat().st_mtime_ns != written
    assert len(changed.train) > 2 * len(first.train)


def test_auto_streams_a_set_past_the_memory_budget(tokenizer, tmp_path):
    path = write_corpus(tmp_path / "c.txt", documents=1000)  # ~140 KB: ~2 MB in memory
    assert _load(path, "causal_lm", tokenizer, tmp_path, memory_budget_mb=1).loading["path"] == (
        "streaming"
    )
    assert _load(path, "causal_lm", tokenizer, tmp_path).loading["path"] == "in_memory"
    # without a job folder to write to (kdcore used as a library on rows), in memory
    assert _load(path, "causal_lm", tokenizer, None, streaming=True).loading["path"] == (
        "in_memory"
    )


def test_padded_rows_count_in_the_budget_and_the_disk_cap(tokenizer, tmp_path, monkeypatch):
    import kdcore.text.data as text_data

    path = write_prompts(tmp_path / "p.jsonl", count=120)  # ~7 KB: ~0.1 MB by its size
    assert path.stat().st_size * 16 < 1024**2
    # but 120 rows padded to 2,048 tokens would take ~2.5 MB held in memory
    spec = {"seq_len": 2048, "memory_budget_mb": 1}
    data = load_text(
        DatasetSpec(name="text", path=str(path), **spec),
        "causal_lm",
        load_tokenizer(tokenizer),
        0,
        tmp_path / "job",
    )
    assert data.loading["path"] == "streaming"
    monkeypatch.setattr(text_data, "MAX_ROWS_FILE_BYTES", 512 * 1024)  # of rows on disk
    with pytest.raises(DataError, match="a shorter seq_len fits them"):
        load_text(
            DatasetSpec(name="text", path=str(path), **spec),
            "causal_lm",
            load_tokenizer(tokenizer),
            0,
            tmp_path / "job2",
        )
    assert not (tmp_path / "job2").exists()  # refused before anything was written


def test_a_streamed_job_trains_as_the_in_memory_one(tokenizer, tmp_path):
    path = write_corpus(tmp_path / "c.txt", documents=120, seed=6)

    def spec(streaming: bool) -> dict:
        return {
            "kind": "train",
            "task": "causal_lm",
            "student": {"arch": "hf:GPT2LMHeadModel", "config": GPT2_STUDENT},
            "dataset": {
                "name": "text",
                "path": str(path),
                "seq_len": 32,
                "tokenizer": str(tokenizer),
                "streaming": streaming,
            },
            "training": {"epochs": 2, "batch_size": 8, "device": "cpu", "precision": "fp32"},
        }

    memory = kdcore.train(spec(False), tmp_path / "memory")
    disk = kdcore.train(spec(True), tmp_path / "disk")
    assert disk["dataset"]["loading"]["path"] == "streaming"
    assert memory["dataset"]["loading"]["path"] == "in_memory"
    assert [h["train_losses"] for h in disk["history"]] == [
        h["train_losses"] for h in memory["history"]
    ]
    assert disk["student"]["perplexity"] == pytest.approx(memory["student"]["perplexity"])
    # the rows were working files: gone once the job is done
    assert not (tmp_path / "disk" / disk["dataset"]["loading"]["files"]).exists()


def test_hostile_text_is_refused_without_being_read_whole(tmp_path):
    one = tmp_path / "one-paragraph.txt"
    with open(one, "w") as fh:  # no blank line: one 1.2-million-character document
        for _ in range(12_000):
            fh.write("x" * 99 + "\n")
    with pytest.raises(DataError, match="a paragraph over 1,000,000 characters"):
        check_text_file(one, "one-paragraph.txt")
    line = tmp_path / "long-line.jsonl"
    line.write_text('{"text": "' + "y" * 2_100_000 + '"}\n')
    with pytest.raises(DataError, match="line 1 is over 2,000,000 characters"):
        check_text_file(line, "long-line.jsonl")


CHILD = """
import json, sys
from pathlib import Path
import torch
from kdcore.spec import DatasetSpec
from kdcore.text.data import load_text
from kdcore.text.tokens import load_tokenizer
path, tokenizer, job, streaming = sys.argv[1:5]
spec = DatasetSpec(name="text", path=path, seq_len=64, streaming=streaming == "true")
data = load_text(spec, "causal_lm", load_tokenizer(Path(tokenizer)), 0, Path(job))
seen, n = 0, len(data.train)
for first in range(0, n, 64):  # an epoch's reads, batch by batch
    seen += int(data.train.rows(torch.arange(first, min(first + 64, n))).ids.sum() > 0)
# VmHWM: this process's own peak (ru_maxrss would carry the forking parent's over exec)
status = open("/proc/self/status").read().split("VmHWM:")[1]
peak = int(status.split()[0]) * 1024
print(json.dumps({"peak": peak, "rows": len(data.train), "batches": seen,
                  "loading": data.loading["path"]}))
"""


def _peak(path: Path, tokenizer: Path, job: Path, streaming: bool) -> dict:
    env = {**os.environ, "RAYON_NUM_THREADS": "2"}
    args = [str(path), str(tokenizer), str(job), "true" if streaming else "false"]
    out = subprocess.run(
        [sys.executable, "-c", CHILD, *args],
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_ten_times_larger_corpus_streams_in_the_same_memory(tokenizer, tmp_path):
    small = write_corpus(tmp_path / "small.txt", documents=20_000, seed=1)  # ~3 MB
    large = write_corpus(tmp_path / "large.txt", documents=200_000, seed=2)  # ~30 MB
    a = _peak(small, tokenizer, tmp_path / "a", streaming=True)
    b = _peak(large, tokenizer, tmp_path / "b", streaming=True)
    held = _peak(large, tokenizer, tmp_path / "c", streaming=False)
    print(f"peak memory: small streamed {a}, large streamed {b}, large in memory {held}")
    assert a["loading"] == b["loading"] == "streaming" and held["loading"] == "in_memory"
    assert b["rows"] > 9 * a["rows"] and b["batches"] * 64 >= b["rows"]  # it read them all
    assert b["peak"] <= 1.3 * a["peak"], (a, b)
    assert held["peak"] > 1.3 * a["peak"], (a, held)  # the test can tell


def test_a_jsonl_with_no_line_break_is_refused_in_bounded_memory(tmp_path):
    """Security round 2: a 64 MiB .jsonl with no line break grew the API by 150-210 MiB
    while its first line was read whole (to tell JSONL from text). Now every read is
    capped at a line's 2,000,000 characters: the check grows a process by under 48 MiB
    (what one capped line costs, decoded, with the interpreter's slack)."""
    path = tmp_path / "no-breaks.jsonl"
    with open(path, "w") as fh:
        fh.write('{"text": "')
        for _ in range(64):
            fh.write("z" * 1024**2)
    said, growth = refusal_and_growth("kdcore.text.data:check_text_file", path)
    assert "line 1 is over 2,000,000 characters" in said
    assert growth < 48 * 1024**2, growth


def test_a_tokenizers_own_padding_and_truncation_are_reset(tmp_path):
    """Security round 2: a tokenizer.json with fixed padding to 10^9 turned 8 short
    documents into 1,024 rows (each text padded). The job's seq_len and padding rule.
    (Padded here to 100,000: the same rule, without asking for gigabytes if it broke.)"""
    from tokenizers import Tokenizer

    from kdcore.text.tokens import read_tokenizer
    from tests.support.text import train_tokenizer, write_corpus

    corpus = write_corpus(tmp_path / "corpus.txt", documents=8)
    plain = train_tokenizer(corpus, tmp_path / "plain.json")
    hostile = Tokenizer.from_file(str(plain))
    hostile.enable_padding(length=100_000, pad_token="<pad>")
    hostile.enable_truncation(max_length=3)
    (tmp_path / "hostile.json").write_text(hostile.to_str())
    read = read_tokenizer((tmp_path / "hostile.json").read_text(), "hostile")
    reference = read_tokenizer(plain.read_text(), "plain")
    text = corpus.read_text()[:200]
    assert read.tok.encode(text).ids == reference.tok.encode(text).ids
    assert 3 < len(read.tok.encode(text).ids) < 200
