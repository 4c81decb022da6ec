"""Exact multi-process scoring: every sample on exactly one process, scores gathered back in input order.

Lightning's DistributedSampler pads the last batch by repeating samples, which would count some images twice in
the metrics; here process r of W scores the indices r, r + W, r + 2W, ... (no padding), and
:func:`gather_shards` rebuilds the full, ordered score tensor on every process.

These helpers use the default process group when one exists (the one Lightning Fabric, a Trainer's DDP strategy,
torchrun or SLURM set up; see ``odin_pl.evaluation.runtime``) and work in a plain process without one.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from odin_pl.errors import PeerFailedError, UserError

T = TypeVar("T")


def world() -> tuple[int, int]:
    """(rank, world size) of the current process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_indices(n: int, rank: int, world_size: int) -> list[int]:
    """Indices rank, rank + world_size, ... of range(n)."""
    return list(range(rank, n, world_size))


def shard_loader(dataset: Dataset, batch_size: int, num_workers: int = 0) -> DataLoader:
    """Batches of this process's shard of ``dataset`` (its :func:`shard_indices`; all of it without a process
    group), in order."""
    rank, world_size = world()
    shard = Subset(dataset, shard_indices(len(dataset), rank, world_size)) if world_size > 1 else dataset
    return DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers)


def gather_shards(local: Tensor, n: int) -> Tensor:
    """All processes' shards [..., len(shard)] -> the full tensor [..., n] in sample order, on every process."""
    rank, world_size = world()
    if world_size == 1:
        return local
    longest = -(-n // world_size)
    device = _collective_device(local.device)
    padded = torch.zeros(*local.shape[:-1], longest, dtype=local.dtype, device=device)
    padded[..., :local.shape[-1]] = local.to(device)
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    with _collective():
        dist.all_gather(parts, padded)
    full = local.new_empty(*local.shape[:-1], n)
    for r, part in enumerate(parts):
        count = len(range(r, n, world_size))
        full[..., r::world_size] = part[..., :count].to(full.device)
    return full


def broadcast_from_zero(obj: T) -> T:
    """Process 0's ``obj`` on every process (``obj`` itself without a process group); others pass anything."""
    if world()[1] == 1:
        return obj
    holder = [obj]
    with _collective():
        dist.broadcast_object_list(holder, src=0)
    return holder[0]


def agree_on_failure(error: Exception | None) -> None:
    """One failure stops every process: raise ``error`` where there is one, and on the other processes a
    UserError saying that another one failed (one all-reduce, so no process is left waiting in a gather). Without a
    process group: raise ``error`` if any."""
    failed = error is not None
    if world()[1] > 1:
        flag = torch.tensor([int(failed)], device=_collective_device(torch.device("cpu")))
        with _collective():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        failed = bool(flag.item())
    if error is not None:
        raise error
    if failed:
        raise UserError("another process of the run stopped with an error (see its message)")


def _collective_device(default: torch.device) -> torch.device:
    """Where tensors for collectives must live: this process's GPU with NCCL, else ``default``."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else default


@contextmanager
def _collective() -> Iterator[None]:
    """A collective of the run: a RuntimeError inside it (gloo's or NCCL's when a peer has gone) becomes
    :class:`~odin_pl.errors.PeerFailedError`, chained to the original."""
    try:
        yield
    except RuntimeError as err:
        raise PeerFailedError(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__) from err
