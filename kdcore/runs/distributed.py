"""Data-parallel runs on one host (`resources.gpus: N`): torchrun's shape without
torchrun. The calling process is rank 0 (it keeps the callbacks, so progress is
reported once and cancel works as for one process); ranks 1..N-1 are spawned
interpreters. Each rank builds the same data and models, DistributedDataParallel
averages the gradients (kdcore.image.trainer.fit), rank 0 alone writes checkpoints and
outputs. With `distillation.sharding: "fsdp"` the ranks shard the models instead
(kdcore.engine.sharding), even a group of one. Backend: NCCL with one GPU per rank, gloo
on the CPU.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kdcore.engine.callbacks import Callbacks
from kdcore.image.run import run_local
from kdcore.spec import JobSpec
from kdcore.tasks import modality
from kdcore.text.run import run_text


def run_one(
    spec: JobSpec,
    out_dir: Path,
    callbacks: Callbacks | None,
    resume_from: str | Path | None,
    keep_checkpoints: int | None = None,
    teacher_cache: Path | None = None,
) -> dict[str, Any]:
    """This process's part of a run, an image job's (kdcore.image.run) or a text
    job's (kdcore.text.run)."""
    if spec.task == "embedding":
        from kdcore.text.embedding.run import run_embedding

        return run_embedding(spec, out_dir, callbacks, resume_from, keep_checkpoints, teacher_cache)
    if modality(spec.task) == "text":
        return run_text(spec, out_dir, callbacks, resume_from, keep_checkpoints)
    return run_local(spec, out_dir, callbacks, resume_from, keep_checkpoints, teacher_cache)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _join(rank: int, world: int, port: int, device: str, threads: int) -> None:
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(rank % torch.cuda.device_count())
    else:
        # N processes on the job's cores: split its threads instead of oversubscribing
        torch.set_num_threads(threads)
    # the rendezvous address is explicit: kdcore reads no environment variables
    dist.init_process_group(
        "nccl" if use_cuda else "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
    )


def _rank_main(
    rank: int,
    world: int,
    port: int,
    spec: dict[str, Any],
    out_dir: str,
    resume: str | None,
    threads: int,
    teacher_cache: str | None,
) -> None:
    _join(rank, world, port, spec["training"]["device"], threads)
    cache = Path(teacher_cache) if teacher_cache else None
    try:
        run_one(JobSpec.model_validate(spec), Path(out_dir), None, resume, None, cache)
    finally:
        dist.destroy_process_group()


def run_parallel(
    spec: JobSpec,
    out_dir: Path,
    callbacks: Callbacks | None,
    resume_from: str | Path | None,
    keep_checkpoints: int | None = None,
    teacher_cache: Path | None = None,
) -> dict[str, Any]:
    world = spec.resources.gpus
    on_gpu = spec.training.device != "cpu" and torch.cuda.is_available()
    if on_gpu and torch.cuda.device_count() < world:
        from kdcore.errors import SpecError

        have = torch.cuda.device_count()
        raise SpecError([("/resources/gpus", f"{world} GPUs asked, {have} here")])
    port = _free_port()
    resume = str(resume_from) if resume_from is not None else None
    threads = max(1, torch.get_num_threads() // world)  # the job's budget, split
    ctx = mp.get_context("spawn")
    others = [
        ctx.Process(
            target=_rank_main,
            args=(
                rank,
                world,
                port,
                spec.model_dump(mode="json"),
                str(out_dir),
                resume,
                threads,
                str(teacher_cache) if teacher_cache else None,
            ),
            daemon=True,  # they die with rank 0
        )
        for rank in range(1, world)
    ]
    for p in others:
        p.start()
    _join(0, world, port, spec.training.device, threads)
    try:
        report = run_one(spec, out_dir, callbacks, resume_from, keep_checkpoints, teacher_cache)
    finally:
        dist.destroy_process_group()
        for p in others:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    failed = [p.exitcode for p in others if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"a data-parallel rank exited with code {failed[0]}")
    return report
