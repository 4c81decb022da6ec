"""Base class of the in-distribution DataModules: seeded splits, loaders and the image spec."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from datamodules.sampling import EpochSampler, EpochSeededDataset, ShardSampler, run_seed
from odin_pl.spec import ImageSpec
from odin_pl.errors import UserError

DATA_ROOT_ENV = "ODIN_PL_DATA"


def resolve_data_root(data_root: str | os.PathLike | None) -> Path:
    """``data_root`` if given, else $ODIN_PL_DATA, else ./data."""
    return Path(data_root or os.environ.get(DATA_ROOT_ENV) or "data").expanduser()


def seeded_permutation(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


class ImageDataModule(pl.LightningDataModule, ABC):
    """An in-distribution data set with train / val / test loaders and an :class:`ImageSpec`.

    ``val_split`` > 0 holds out that fraction of the training set (seeded) for validation; with 0 (the paper's
    setting) validation runs on the test set, as the paper monitors on it, and no checkpoint is selected on it.
    Subclasses implement :meth:`image_spec` and :meth:`load_split`.
    """

    #: OOD sets that ``evaluate.py`` runs by default for this data set (names of ``datamodules.ood``).
    default_ood_sets: tuple[str, ...] = ("gaussian", "uniform")

    def __init__(self, data_root: str | None = None, batch_size: int = 128, eval_batch_size: int | None = None,
                 num_workers: int = 0, val_split: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        if not 0 <= val_split < 1:
            raise UserError(f"val_split must be in [0, 1), got {val_split}")
        if batch_size <= 0:
            raise UserError(f"batch_size must be positive, got {batch_size}")
        self.data_root = resolve_data_root(data_root)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.val_split = val_split
        self.seed = seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    @property
    @abstractmethod
    def image_spec(self) -> ImageSpec:
        """Size, channels, mean/std and class names of this data set."""

    @abstractmethod
    def load_split(self, train: bool, augment: bool) -> Dataset:
        """The training (``train=True``) or test set, yielding (normalized image, label)."""

    def setup(self, stage: str | None = None) -> None:
        if self.test_set is None:
            self.test_set = self.load_split(train=False, augment=False)
        if stage in (None, "fit", "validate") and self.train_set is None:
            train = self.load_split(train=True, augment=True)
            if self.val_split > 0:
                order = seeded_permutation(len(train), self.seed)
                n_val = max(1, int(round(self.val_split * len(train))))
                self.val_set = Subset(self.load_split(train=True, augment=False), order[:n_val].tolist())
                self.train_set = Subset(train, order[n_val:].tolist())
            else:
                self.train_set, self.val_set = train, self.test_set

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        """Training: shuffled and augmented as a function of (run seed, epoch, index) (``datamodules.sampling``);
        evaluation: this process's unpadded shard, in order. The loader's own generator seeds its workers, so
        making an iterator draws nothing from the global generators."""
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for a dataloader")
        seed = run_seed(self.seed)
        if train:
            trainer = self.trainer
            epoch = trainer.fit_loop.epoch_progress.current.processed if trainer is not None else 0
            sampler: Sampler = EpochSampler(dataset, seed, epoch)
            dataset = EpochSeededDataset(dataset, seed)
        else:
            sampler = ShardSampler(dataset)
        return DataLoader(dataset, batch_size=self.batch_size if train else self.eval_batch_size, sampler=sampler,
                          num_workers=self.num_workers, drop_last=False, persistent_workers=self.num_workers > 0,
                          pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(seed))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
