"""Sequence-level KD's first step (Kim & Rush 2016; what the hosted services call
distillation): the teacher writes a completion for every training prompt, batched,
with `distillation.generation_temperature` (0: greedy) and `generation_max_tokens`.
A prompt's completion ends at the end of text; packed text's openings are continued
through ends of text (packed rows run on from one document into the next, and the
student learns from rows like them). Completions go to `generations.jsonl` (an
artifact) batch by batch; a resumed job keeps the batches already written and
generates the rest, each batch from its own seed, so the file is the same as an
uninterrupted run's. Each batch is a progress step (phase "generate")."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import nn

from kdcore.engine.callbacks import Callbacks, Progress
from kdcore.errors import Cancelled
from kdcore.text.tokens import TextTokenizer

GENERATIONS = "generations.jsonl"


def _done(path: Path, size: int) -> list[list[int]]:
    """Completions of the whole batches already written; the rest (a torn line, a
    batch cut short) is dropped from the file, to be generated again."""
    if not path.exists():
        return []
    lines, done = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            done.append(list(json.loads(line)["completion_ids"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            break
        lines.append(line)
    keep = len(done) - len(done) % size
    if keep < len(lines) or len(path.read_bytes()) != sum(len(x.encode()) + 1 for x in lines):
        path.write_text("".join(line + "\n" for line in lines[:keep]), encoding="utf-8")
    return done[:keep]


@torch.inference_mode()
def _batch(
    teacher: nn.Module,
    prompts: list[list[int]],
    tokenizer: TextTokenizer,
    temperature: float,
    max_tokens: int,
    device: torch.device,
    stop_at_eos: bool,
) -> list[list[int]]:
    """Left-padded prompts -> their completions' tokens (up to the end of text, or
    `max_tokens` through it)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), tokenizer.pad_id, dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    out = teacher.generate(  # type: ignore[operator]
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=max_tokens,
        pad_token_id=tokenizer.pad_id,
        # [] (not None, which generate fills from the model's config): no token stops
        eos_token_id=tokenizer.eos_id if stop_at_eos else [],
        **(sampling if temperature > 0 else {"do_sample": False}),
    )
    completions = []
    for row in out[:, width:].tolist():
        if stop_at_eos and tokenizer.eos_id in row:
            row = row[: row.index(tokenizer.eos_id)]
        completions.append(row)
    return completions


def generate_completions(
    teacher: nn.Module,
    prompts: list[list[int]],
    tokenizer: TextTokenizer,
    out_dir: Path,
    temperature: float,
    max_tokens: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    callbacks: Callbacks,
    stop_at_eos: bool = True,
) -> list[list[int]]:
    """The teacher's completion of every prompt, resumed from `generations.jsonl`."""
    teacher.eval()
    path = out_dir / GENERATIONS
    done = _done(path, batch_size)
    batches = (len(prompts) + batch_size - 1) // batch_size
    start = time.perf_counter()
    with open(path, "a", encoding="utf-8") as fh:
        for b in range(len(done) // batch_size, batches):
            if callbacks.should_stop():
                raise Cancelled(f"stopped while generating, after batch {b}")
            torch.manual_seed(seed * 1_000_003 + b)  # each batch's samples from its own seed
            chunk = prompts[b * batch_size : (b + 1) * batch_size]
            new = _batch(teacher, chunk, tokenizer, temperature, max_tokens, device, stop_at_eos)
            for p, c in zip(chunk, new, strict=True):
                record = {
                    "prompt": tokenizer.decode(p),
                    "completion": tokenizer.decode(c),
                    "completion_ids": c,
                }
                fh.write(json.dumps(record) + "\n")
            fh.flush()
            done += new
            elapsed = time.perf_counter() - start
            callbacks.on_step(Progress("generate", 1, 1, b + 1, batches, 0.0, elapsed_s=elapsed))
    return done
