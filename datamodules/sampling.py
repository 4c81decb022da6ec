"""Samplers that make training data a function of (seed, epoch, index) and evaluate every image exactly once.

Training: :class:`EpochSampler` shuffles with a generator seeded from (seed, epoch) and yields ``(epoch, index)``
pairs; :class:`EpochSeededDataset` draws each sample under generators seeded from (seed, epoch, index). Order and
augmentation then depend neither on the global generators nor on which DataLoader worker (persistent or not)
loads a sample, so a resumed run sees exactly the data of an uninterrupted one.

Evaluation: :class:`ShardSampler` gives process r of W the indices r, r + W, ... (no padding: Lightning's
DistributedSampler would repeat images to even out the shards, and count them twice in the metrics).

Both samplers are DistributedSamplers, so Lightning uses them as they are under DDP.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import numpy as np
from torch.utils.data import Dataset, DistributedSampler

from odin_pl.distributed import shard_indices, world
from odin_pl.training.rng import seeded


def run_seed(default: int) -> int:
    """The run's seed: that of ``seed_everything`` (Lightning's ``PL_GLOBAL_SEED``, which its own
    DistributedSampler uses too), else ``default``."""
    return int(os.environ.get("PL_GLOBAL_SEED", default))


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed that is a function of (seed, epoch, index) only."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class EpochSampler(DistributedSampler):
    """This process's share of a permutation seeded with (seed, epoch), as ``(epoch, index)`` pairs.

    ``epoch`` is where a run starts (a resumed run's first DataLoader iterator is made before Lightning calls
    :meth:`set_epoch`); Lightning sets it at every later epoch.
    """

    def __init__(self, dataset: Dataset, seed: int, epoch: int = 0) -> None:
        rank, world_size = world()
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return ((epoch, index) for index in super().__iter__())


class EpochSeededDataset(Dataset):
    """``dataset[index]`` drawn under torch, numpy and Python generators seeded with (seed, epoch, index); indexed
    by the ``(epoch, index)`` pairs of :class:`EpochSampler`. A dataset with a ``seeded_item(index, seed)`` method
    (augmentation as a function of the seed alone) gets the seed directly, without touching the generators; one
    whose ``draws_random_numbers`` is False is read as it is."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        if not getattr(self.dataset, "draws_random_numbers", True):  # nothing to seed (no augmentation)
            return self.dataset[index]
        seed = sample_seed(self.seed, epoch, index)
        seeded_item = getattr(self.dataset, "seeded_item", None)
        if seeded_item is not None:
            return seeded_item(index, seed)
        with seeded(seed):
            return self.dataset[index]


class ShardSampler(DistributedSampler):
    """The indices rank, rank + world_size, ... of the dataset, in order and unpadded."""

    def __init__(self, dataset: Dataset) -> None:
        rank, world_size = world()
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=False)
        self.indices = shard_indices(len(dataset), rank, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
