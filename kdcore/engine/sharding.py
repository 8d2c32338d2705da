"""Weights split across ranks (`distillation.sharding: "fsdp"`): FSDP2's `fully_shard`
on each block and then the whole model, so each rank holds 1/N of every parameter, its
gradient and its optimizer state; a forward gathers one block at a time.

The loop reads and writes weights through `Weights`, the same for every run:
- `Replicated` (one process, or DDP, where every rank holds the whole model): the
  module's own state_dict, the optimizer's as torch keeps it;
- `Sharded`: torch.distributed.checkpoint's state-dict API gathers the whole model and
  optimizer (keyed by parameter name, not by position) into rank 0's CPU memory for a
  checkpoint, and puts such a state back on any number of ranks. That is what lets a
  job resume on another rank count. The checkpoint stays one torch file read with
  `weights_only=True`: DCP's own sharded folders are not used, because their metadata
  is read back with pickle, which kdcore never loads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import torch
from torch import Tensor, nn


class Weights(Protocol):
    """How the loop reads and writes the student's and the optimizer's state."""

    sharded: bool

    def model_state(self) -> dict[str, Tensor]:
        """The whole model's state on the CPU, for the best epoch; every rank calls it."""
        ...

    def load_model(self, state: dict[str, Tensor]) -> None: ...

    def checkpoint(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(model, optimizer) states for a checkpoint (whole on rank 0); every rank calls it."""
        ...

    def restore(self, model: dict[str, Any], optimizer: dict[str, Any]) -> None: ...


class Replicated:
    """Every rank holds the whole model: its own state dicts, as torch writes them."""

    sharded = False

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def model_state(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def load_model(self, state: dict[str, Tensor]) -> None:
        self.model.load_state_dict(state)

    def checkpoint(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.model.state_dict(), self.optimizer.state_dict()

    def restore(self, model: dict[str, Any], optimizer: dict[str, Any]) -> None:
        self.model.load_state_dict(model)
        self.optimizer.load_state_dict(optimizer)


class Sharded:
    """Each rank holds a shard: whole states are gathered, and put back resharded."""

    sharded = True

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def model_state(self) -> dict[str, Tensor]:
        return full_state(self.model)

    def load_model(self, state: dict[str, Tensor]) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
        )

        whole: dict[str, Any] = dict(state)
        set_model_state_dict(self.model, whole, options=StateDictOptions(full_state_dict=True))

    def checkpoint(self) -> tuple[dict[str, Any], dict[str, Any]]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)  # rank 0 only
        return get_state_dict(self.model, self.optimizer, options=options)

    def restore(self, model: dict[str, Any], optimizer: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        # every rank read the checkpoint file: each keeps its own shard of it
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=model,
            optim_state_dict=optimizer,
            options=StateDictOptions(full_state_dict=True),
        )


def no_grad_for(model: nn.Module) -> contextlib.AbstractContextManager[Any]:
    """A forward without gradients: inference_mode, but no_grad for a sharded model
    (FSDP reuses the buffers it gathers into, and inference tensors cannot be reused
    by a later forward that builds gradients)."""
    return torch.no_grad() if is_sharded(model) else torch.inference_mode()


def weights_of(model: nn.Module, optimizer: torch.optim.Optimizer) -> Weights:
    """Sharded access for a model that fully_shard split, else the plain one."""
    if is_sharded(model):
        return Sharded(model, optimizer)
    return Replicated(model, optimizer)


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard(model: nn.Module, blocks: Iterable[nn.Module], device: torch.device) -> nn.Module:
    """Split `model` across the ranks of the process group, in place: each block (a
    transformer layer) is one unit, gathered for its forward and freed after it, the
    rest (embeddings, head) the root's. Returns the model."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    for block in blocks:
        fully_shard(block, mesh=mesh)
    # the root too is freed after each forward: FSDP keeps it gathered for the backward
    # by default, and a frozen teacher has no backward (it would stay whole on every rank)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)
    return model


def local_parameters(model: nn.Module) -> int:
    """The parameter elements this rank holds (its shards, or the whole model)."""
    from torch.distributed.tensor import DTensor

    return sum(
        p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in model.parameters()
    )


def per_rank(count: int) -> list[int]:
    """`count` of every rank, in rank order (every rank calls it)."""
    world = torch.distributed.get_world_size()
    mine = torch.tensor([count], dtype=torch.int64)
    if torch.distributed.get_backend() == "nccl":
        mine = mine.cuda()
    every = [torch.zeros_like(mine) for _ in range(world)]
    torch.distributed.all_gather(every, mine)
    return [int(t.item()) for t in every]


def full_state(model: nn.Module) -> dict[str, Tensor]:
    """The whole state of a sharded model on the CPU of every rank, one tensor at a time
    (a device holds one gathered tensor at once, never the whole model)."""
    from torch.distributed.tensor import DTensor

    state = {}
    for name, value in model.state_dict().items():
        whole = value.full_tensor() if isinstance(value, DTensor) else value
        state[name] = whole.detach().cpu().clone()
    return state


def unsharded(model: nn.Module, build: Callable[[], nn.Module]) -> nn.Module:
    """An ordinary module with a sharded model's weights, built by `build` (the same
    architecture) on the CPU of every rank: what a run measures, exports and saves
    after training. Every rank calls it."""
    state = full_state(model)
    twin = build()
    twin.load_state_dict(state)
    return twin.eval()
