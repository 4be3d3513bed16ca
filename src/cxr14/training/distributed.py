"""Data-parallel training under torchrun: which process am I, and the few collectives we need.

    context = init_distributed("auto")     # reads RANK / WORLD_SIZE / LOCAL_RANK set by torchrun
    if context.is_main: ...                 # only rank 0 writes checkpoints, metrics, MLflow
    close_distributed(context)

Without torchrun (WORLD_SIZE unset or 1) everything degrades to a single process and no
process group is created, so the same engine runs by hand, under DVC, and under torchrun.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from cxr14.inference import select_device  # the device rule, shared with inference


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str) -> DistributedContext:
    """Join the process group torchrun prepared (NCCL on GPUs, gloo on the CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(device_name, local_rank, world_size)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(rank, world_size, local_rank, device)


def close_distributed(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def sum_across(context: DistributedContext, *values: float) -> list[float]:
    """Sum scalars over all processes (e.g. loss totals and image counts for the epoch log)."""
    if not context.enabled:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def from_main(context: DistributedContext, value: Any) -> Any:
    """Rank 0's `value` on every process (decisions such as early stopping)."""
    if not context.enabled:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        dist.barrier()


def gather_to_all(context: DistributedContext, value: Any) -> list[Any]:
    """Every process's `value`, in rank order (e.g. per-rank RNG states for a checkpoint)."""
    if not context.enabled:
        return [value]
    values: list[Any] = [None] * context.world_size
    dist.all_gather_object(values, value)
    return values
