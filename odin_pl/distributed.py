"""Exact multi-process scoring: every sample on exactly one process, scores gathered back in input order.

Lightning's DistributedSampler pads the last batch by repeating samples, which would count some images twice in
the metrics; here process r of W scores the indices r, r + W, r + 2W, ... (no padding), and
:func:`gather_shards` rebuilds the full, ordered score tensor on every process.
"""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
from torch import Tensor


def world() -> tuple[int, int]:
    """(rank, world size) of the current process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_indices(n: int, rank: int, world_size: int) -> list[int]:
    """Indices rank, rank + world_size, ... of range(n)."""
    return list(range(rank, n, world_size))


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
    dist.all_gather(parts, padded)
    full = local.new_empty(*local.shape[:-1], n)
    for r, part in enumerate(parts):
        count = len(range(r, n, world_size))
        full[..., r::world_size] = part[..., :count].to(full.device)
    return full


def all_true(flag: bool) -> bool:
    """Whether ``flag`` holds on every process (on this one, without a process group)."""
    if world()[1] == 1:
        return flag
    agreed = torch.tensor([int(flag)], device=_collective_device(torch.device("cpu")))
    dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
    return bool(agreed.item())


def _collective_device(default: torch.device) -> torch.device:
    """Where tensors for collectives must live: this process's GPU with NCCL, else ``default``."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else default


def _cpu_count() -> int:
    """Cores this process may run on (the affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_process_group(rank: int, world_size: int, port: int) -> None:
    """Join a process group on this machine: NCCL with one GPU per process when there are GPUs, else gloo.

    CPU processes share the cores: each gets cores // world_size threads unless OMP_NUM_THREADS says otherwise
    (by default every process would start one thread per core, and world_size processes would oversubscribe them).
    """
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    use_cuda = torch.cuda.is_available() and torch.cuda.device_count() >= world_size
    if use_cuda:
        torch.cuda.set_device(rank)
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, _cpu_count() // world_size))
    dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world_size)
