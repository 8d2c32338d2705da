"""Token-level distillation of language models (issue 17): training tokens/s of a GPT-2
student with half its teacher's layers, trained through kdcore.distill

  alone           the student on the data (cross-entropy), no teacher
  forward_kl      a live teacher: its forward pass at every step
  gkd             the same with generalised JSD (beta 0.5)
  forward_kl@k16  the teacher's top-16 outputs stored once (kdcore.text.teacher_store,
                  memory-mapped), then read at every step: no teacher forward pass
  from outputs    forward_kl from that job's teacher_outputs.zip: no teacher model at all
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

`--loss-memory` measures the token-level loss alone (issue 33): the peak memory of one
forward + backward of `token_kd_loss` (chunked) and `token_kd_loss_unchunked` (the
plain form, what jobs ran before) at vocabularies of 32k and 128k, above the inputs.

  python bench/lm_kd.py --loss-memory            CPU (the resident set's peak)
  python bench/lm_kd.py --loss-memory --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
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


LOSS_VOCABS = (32_000, 128_000)


def loss_peak_bytes(form: str, vocab: int, positions: int, method: str, device: str) -> int:
    """Peak memory of one loss forward + backward above its inputs (student logits with
    their gradient's slot, teacher logits, ids), in this process: on CUDA the
    allocator's peak, on the CPU the resident set's high-water mark (Linux: reset by
    writing 5 to /proc/self/clear_refs)."""
    from kdcore.text.losses import token_kd_loss, token_kd_loss_unchunked

    loss = token_kd_loss if form == "chunked" else token_kd_loss_unchunked
    torch.manual_seed(0)
    batch = 2
    shape = (batch, positions // batch, vocab)
    student = torch.randn(shape, device=device, requires_grad=True)
    teacher = torch.randn(shape, device=device)
    ids = torch.randint(0, vocab, shape[:2], device=device)
    targets = torch.ones(shape[:2], dtype=torch.bool, device=device)
    # a warm-up on a small vocabulary: the kernels' code pages and the autograd
    # engine's threads are resident before the measurement, not counted in it
    small = torch.randn(shape[:2] + (64,), device=device, requires_grad=True)
    loss(method, small, small.detach(), ids % 64, targets, 2.0, 0.5, 0.5)["loss"].backward()
    del small
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kib("VmRSS") * 1024
    loss(method, student, teacher, ids, targets, 2.0, 0.5, 0.5)["loss"].backward()
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    return _status_kib("VmHWM") * 1024 - before


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} is not in /proc/self/status")


def loss_memory(device: str, positions: int, repeats: int, method: str) -> None:
    """Each form at each vocabulary, each measurement in a fresh process (a process's
    high-water mark only rises): medians, and the plain form's peak / the chunked's."""
    print(
        f"loss peak memory above its inputs, {method}, {positions} predicted positions, "
        f"fp32 logits, device {device}; medians of {repeats} fresh processes"
    )
    print(f"{'vocab':>8}{'plain MiB':>12}{'chunked MiB':>13}{'plain / chunked':>17}")
    results = {}
    for vocab in LOSS_VOCABS:
        peaks = {}
        for form in ("plain", "chunked"):
            runs = []
            for _ in range(repeats):
                args = ["--loss-case", form, str(vocab), str(positions), method, device]
                done = subprocess.run(
                    [sys.executable, __file__, *args], capture_output=True, text=True, check=True
                )
                runs.append(int(done.stdout.split()[-1]))
            peaks[form] = statistics.median(runs)
        ratio = peaks["plain"] / max(peaks["chunked"], 1)
        results[vocab] = {**peaks, "ratio": ratio}
        print(
            f"{vocab:>8}{peaks['plain'] / 2**20:>12.0f}{peaks['chunked'] / 2**20:>13.0f}"
            f"{ratio:>17.2f}"
        )
    print(json.dumps(results))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--loss-memory", action="store_true", help="the loss's peak memory")
    ap.add_argument("--positions", type=int, default=1024, help="--loss-memory: tokens")
    ap.add_argument("--method", default="forward_kl", help="--loss-memory: the divergence")
    ap.add_argument("--loss-case", nargs=5, help=argparse.SUPPRESS)  # one measurement
    args = ap.parse_args()
    if args.loss_case:
        form, vocab, positions, method, device = args.loss_case
        print(loss_peak_bytes(form, int(vocab), int(positions), method, device))
        return
    if args.loss_memory:
        loss_memory(args.device, args.positions, args.repeats, args.method)
        return
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
        "from outputs": {  # the first forward_kl@k16 run's artifact
            **base,
            "kind": "distill",
            "teacher": {"outputs": str(tmp / "forward_kl@k160" / "teacher_outputs.zip")},
            "distillation": {"method": "forward_kl"},
        },
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
