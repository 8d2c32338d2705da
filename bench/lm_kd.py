"""Token-level distillation of language models (issue 17): training tokens/s of a GPT-2
student with half its teacher's layers, trained through kdcore.distill

  alone           the student on the data (cross-entropy), no teacher
  forward_kl      a live teacher: its forward pass at every step
  gkd             the same with generalised JSD (beta 0.5)
  forward_kl@k16  the teacher's top-16 logits cached once (fp16 values, int32 ids,
                  memory-mapped), then read at every step: no teacher forward pass
  checkpointed    forward_kl with gradient checkpointing (recomputed activations)

After a warm-up run, each is run `--repeats` times; printed: the medians of training
tokens/s (the loop only) and of the job's wall time (the top-k cache's build included),
tokens/s as a ratio to the student alone, and on CUDA the peak memory allocated.
Text: generated sentences over a Zipfian lexicon of 20,000 made-up words, a BPE
tokenizer trained on them (the vocabulary of SIZES). The models start from random
weights: speed does not depend on what they know.

  python bench/lm_kd.py --smoke                 a minute on a laptop CPU
  python bench/lm_kd.py                          the CPU figures
  python bench/lm_kd.py --device cuda            GPT-2 small (12 x 768) into 6 layers
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import kdcore  # noqa: E402
from tests.support.text import train_tokenizer  # noqa: E402  (the tests' BPE trainer)

SIZES = {  # teacher config, rows of text, seq_len, batch, vocab
    "smoke": ({"n_layer": 2, "n_embd": 64, "n_head": 2}, 64, 64, 8, 1000),
    "cpu": ({"n_layer": 4, "n_embd": 256, "n_head": 4}, 512, 128, 8, 8000),
    "cuda": ({"n_layer": 12, "n_embd": 768, "n_head": 12}, 8192, 512, 16, 16000),
}


def write_text(path: Path, rows: int, seq_len: int, seed: int = 0) -> Path:
    """Sentences over a Zipfian lexicon: enough distinct words for a large vocabulary."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lexicon = ["".join(rng.choice(letters, rng.integers(2, 9))) for _ in range(20_000)]
    p = 1.0 / np.arange(1, len(lexicon) + 1)
    p /= p.sum()
    words = rng.choice(len(lexicon), size=rows * seq_len, p=p)  # ~1.5 tokens a word
    with open(path, "w", encoding="utf-8") as fh:
        for start in range(0, len(words), 12):
            fh.write(" ".join(lexicon[w] for w in words[start : start + 12]) + ".\n")
            if rng.random() < 0.1:
                fh.write("\n")  # a new document
    return path


def run(spec: dict, out: Path, device: str) -> dict:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    report = kdcore.distill(spec, out) if spec["kind"] == "distill" else kdcore.train(spec, out)
    peak = torch.cuda.max_memory_allocated() / 1024**3 if device == "cuda" else None
    return {
        "tokens_per_s": report["train_tokens_per_s"],
        "wall_s": time.perf_counter() - start,
        "peak_gib": peak,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    size = "smoke" if args.smoke else args.device
    teacher, rows, seq_len, batch, vocab = SIZES[size]
    repeats = 1 if args.smoke else args.repeats
    tmp = Path(tempfile.mkdtemp(prefix="bench_lm_"))
    corpus = write_text(tmp / "corpus.txt", rows, seq_len)
    tokenizer = train_tokenizer(corpus, tmp / "tokenizer.json", vocab_size=vocab)
    student = {**teacher, "n_layer": teacher["n_layer"] // 2}
    base = {
        "task": "causal_lm",
        "student": {"arch": "hf:GPT2LMHeadModel", "config": student},
        "dataset": {
            "name": "text",
            "path": str(corpus),
            "seq_len": seq_len,
            "tokenizer": str(tokenizer),
        },
        "training": {"epochs": 1, "batch_size": batch, "device": args.device},
    }
    distill = {
        **base,
        "kind": "distill",
        "teacher": {"arch": "hf:GPT2LMHeadModel", "config": teacher},
    }
    cases = {
        "alone": {**base, "kind": "train"},
        "forward_kl": {**distill, "distillation": {"method": "forward_kl"}},
        "gkd": {**distill, "distillation": {"method": "gkd"}},
        "forward_kl@k16": {**distill, "distillation": {"method": "forward_kl", "teacher_topk": 16}},
        "checkpointed": {
            **distill,
            "distillation": {"method": "forward_kl"},
            "training": {**base["training"], "gradient_checkpointing": True},
        },
    }
    print(
        f"device {args.device}; teacher GPT-2 {teacher['n_layer']} x {teacher['n_embd']}, "
        f"student {student['n_layer']} layers; {rows} rows of {seq_len} tokens, batch {batch}, "
        f"vocabulary {vocab}; medians of {repeats}"
    )
    run(cases["alone"], tmp / "warm-up", args.device)  # imports, allocator, kernels
    results = {}
    for name, spec in cases.items():
        runs = [run(spec, tmp / f"{name}{i}", args.device) for i in range(repeats)]
        results[name] = {
            k: statistics.median([r[k] for r in runs]) if runs[0][k] is not None else None
            for k in runs[0]
        }
    alone = results["alone"]["tokens_per_s"]
    print(f"{'case':<16}{'tokens/s':>12}{'x alone':>9}{'wall s':>9}{'peak GiB':>10}")
    for name, r in results.items():
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
        print(
            f"{name:<16}{r['tokens_per_s']:>12.0f}{r['tokens_per_s'] / alone:>9.2f}"
            f"{r['wall_s']:>9.1f}{peak:>10}"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
