"""Pieces that train.py loads by class path in the kill-and-resume tests (the test puts tests/ on PYTHONPATH).

``KillAfterEpoch`` ends its own process with SIGKILL (no clean-up, as a crash or ``kill -9`` would); the
DataModule augments with torch's, numpy's and Python's generators and the model draws dropout masks, so that a
resume is exact only if all of them are restored or seeded as train.py promises.
"""

from __future__ import annotations

import os
import random
import signal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from timm.models import register_model
from torch import Tensor, nn
from torch.utils.data import Dataset

from datamodules import DigitsDataModule


class KillAfterEpoch(Callback):
    """SIGKILL this process two batches into the epoch after ``epoch`` (0-based), i.e. after that epoch's
    checkpoint and after some unsaved progress."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: object,
                           batch: object, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch + 1 and batch_idx == 1:
            os.kill(os.getpid(), signal.SIGKILL)


class _Augmented(Dataset):
    """Random shift (torch), flip (Python) and noise (numpy) of the wrapped training images."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x, y = self.dataset[index]
        x = torch.roll(x, shifts=int(torch.randint(-1, 2, ())), dims=-1)
        if random.random() < 0.5:
            x = x.flip(-1)
        return x + torch.from_numpy(np.random.normal(0, 0.1, x.shape).astype(np.float32)), y


class AugmentedDigits(DigitsDataModule):
    """The digits, with :class:`_Augmented` training images."""

    def load_split(self, train: bool, augment: bool) -> Dataset:
        dataset = super().load_split(train, augment)
        return _Augmented(dataset) if augment else dataset


@register_model
def dropout_mlp(pretrained: bool = False, *, num_classes: int = 10, in_chans: int = 1, img_size: int = 8,
                **kwargs: object) -> nn.Module:
    """A small MLP with dropout (its masks come from torch's global generator)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * img_size * img_size, 32), nn.ReLU(), nn.Dropout(0.3),
                         nn.Linear(32, num_classes))
