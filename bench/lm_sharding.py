"""Sharding a causal LM's distillation across ranks (issue 33, item 5): what each rank
holds and how fast a step is, for one process holding the whole student and teacher
beside N ranks that shard both with kdcore's FSDP2 path (kdcore.engine.sharding.shard,
what `distillation.sharding: "fsdp"` runs).

Each setup trains the same GPT-2 student (half its teacher's layers) with forward KL
from a live teacher on the same global batches of random tokens (speed and memory do
not depend on what a model knows). Measured per rank, from the tensors themselves:
the bytes of the student's weights, gradients and AdamW state, and of the teacher's
weights that the rank holds after a step; on CUDA also the peak memory allocated.
Printed: the medians of the step time after a warm-up, global tokens/s, and each as a
ratio to one process; the last step's loss (the same batches: it should agree).

  python bench/lm_sharding.py --smoke           a few steps of tiny models (CPU, gloo)
  python bench/lm_sharding.py                   the CPU figures (gloo, 2 ranks)
  python bench/lm_sharding.py --device cuda     NCCL, one GPU per rank (needs >= 2 GPUs)
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = {  # teacher config, vocab, seq_len, global batch, steps
    "smoke": ({"n_layer": 2, "n_embd": 64, "n_head": 2}, 1000, 32, 4, 3),
    "cpu": ({"n_layer": 8, "n_embd": 256, "n_head": 4}, 8000, 128, 8, 12),
    "cuda": ({"n_layer": 24, "n_embd": 1024, "n_head": 16}, 32000, 1024, 16, 20),
}
WARMUP = 2


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> int:
    """What this rank holds of a model (its shards, or all of it), with its gradients
    and optimizer state."""
    from torch.distributed.tensor import DTensor

    def local(t: torch.Tensor) -> torch.Tensor:
        return t.to_local() if isinstance(t, DTensor) else t

    held = 0
    for p in model.parameters():
        held += local(p).numel() * p.element_size()
        if p.grad is not None:
            held += local(p.grad).numel() * p.grad.element_size()
    for state in optimizer.state.values() if optimizer else []:
        held += sum(local(v).numel() * v.element_size() for v in state.values() if v.dim())
    return held


def _rank(rank: int, world: int, port: int, size: str, sharded: bool, device: str, out: str):
    from transformers import GPT2Config, GPT2LMHeadModel

    from kdcore.engine.sharding import shard
    from kdcore.text.losses import token_kd_loss
    from kdcore.text.models import layer_list

    cuda = device == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    else:
        torch.set_num_threads(max(1, (torch.get_num_threads() or 1) // world))
    dist.init_process_group(
        "nccl" if cuda else "gloo", f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    dev = torch.device("cuda", rank) if cuda else torch.device("cpu")
    t_cfg, vocab, seq_len, batch, steps = SIZES[size]
    common = {"vocab_size": vocab, "n_positions": seq_len, "bos_token_id": 0, "eos_token_id": 0}
    torch.manual_seed(0)
    teacher = GPT2LMHeadModel(GPT2Config(**t_cfg, **common)).eval().requires_grad_(False)
    student_cfg = {**t_cfg, "n_layer": t_cfg["n_layer"] // 2}
    student = GPT2LMHeadModel(GPT2Config(**student_cfg, **common, resid_pdrop=0.0))
    for model in (student, teacher):
        shard(model, layer_list(model), dev) if sharded else model.to(dev)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(1)
    times, loss = [], 0.0
    for _ in range(WARMUP + steps):
        ids = torch.randint(0, vocab, (batch, seq_len), generator=gen)
        mine = ids[rank * batch // world : (rank + 1) * batch // world].to(dev)
        targets = torch.ones_like(mine, dtype=torch.bool)
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        logits = student(input_ids=mine).logits
        with torch.no_grad():
            t_logits = teacher(input_ids=mine).logits
        terms = token_kd_loss("forward_kl", logits, t_logits, mine, targets, 1.0, 0.0, 1.0, 0.5)
        optimizer.zero_grad(set_to_none=False)
        terms["loss"].backward()
        optimizer.step()
        value = terms["loss"].detach().reshape(1)
        dist.all_reduce(value)
        loss = float(value.item()) / world
        times.append(time.perf_counter() - start)
    result = {
        "rank": rank,
        "step_s": statistics.median(times[WARMUP:]),
        "student_bytes": _state_bytes(student, optimizer),
        "teacher_bytes": _state_bytes(teacher, None),
        "peak_bytes": torch.cuda.max_memory_allocated(dev) if cuda else None,
        "loss": loss,
        "tokens": batch * seq_len,
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def measure(size: str, world: int, sharded: bool, device: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_rank, args=(world, _port(), size, sharded, device, out), nprocs=world)
        return [json.loads(p.read_text()) for p in sorted(Path(out).glob("rank*.json"))]


def _mb(n: float) -> str:
    return f"{n / 2**20:8.1f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    size = "smoke" if args.smoke else args.device
    if args.device == "cuda" and torch.cuda.device_count() < args.ranks:
        print(
            f"lm_sharding: {args.ranks} ranks need {args.ranks} GPUs, "
            f"{torch.cuda.device_count()} here: nothing measured"
        )
        return
    t_cfg, vocab, seq_len, batch, steps = SIZES[size]
    print(
        f"teacher GPT-2 {t_cfg['n_layer']}x{t_cfg['n_embd']}, student "
        f"{t_cfg['n_layer'] // 2} layers, vocab {vocab}, seq {seq_len}, global batch {batch}, "
        f"{steps} steps after {WARMUP}, {args.device}"
    )
    one = measure(size, 1, False, args.device)[0]
    ranks = measure(size, args.ranks, True, args.device)
    print(
        f"{'setup':<22}{'student MB/rank':>16}{'teacher MB/rank':>16}{'peak MB':>9}"
        f"{'step ms':>9}{'tokens/s':>10}{'x1':>6}{'loss':>9}"
    )
    for name, rows in (("1 process, whole", [one]), (f"{args.ranks} ranks, fsdp", ranks)):
        step = max(r["step_s"] for r in rows)  # a step ends when its slowest rank does
        rate = one["tokens"] / step
        peak = max(r["peak_bytes"] for r in rows) if rows[0]["peak_bytes"] else None
        print(
            f"{name:<22}{_mb(max(r['student_bytes'] for r in rows)):>16}"
            f"{_mb(max(r['teacher_bytes'] for r in rows)):>16}"
            f"{_mb(peak) if peak else '-':>9}{step * 1000:9.1f}{rate:10.0f}"
            f"{one['step_s'] / step:6.2f}{rows[0]['loss']:9.4f}"
        )
    held = max(r["student_bytes"] + r["teacher_bytes"] for r in ranks)
    whole = one["student_bytes"] + one["teacher_bytes"]
    print(f"each rank holds {held / whole:.2f}x of what one process holds (weights, grads, AdamW)")


if __name__ == "__main__":
    main()
