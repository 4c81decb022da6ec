"""scikit-learn's 8x8 handwritten digits: the offline quickstart data set (ships inside scikit-learn)."""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from datamodules.base import ImageDataModule, seeded_permutation
from odin_pl.images import normalize
from odin_pl.spec import ImageSpec
from odin_pl.errors import UserError


@cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.images / 16.0).astype(np.float32), data.target.astype(np.int64)


class DigitsDataModule(ImageDataModule):
    """1,797 grayscale 8x8 digits (pixels 0..16 scaled to [0, 1]); a seeded ``test_fraction`` is the test set.

    Mean and std are those of the training split. No download: the data ship with scikit-learn.
    """

    default_ood_sets = ("gaussian", "uniform", "photos")

    def __init__(self, test_fraction: float = 1 / 3, batch_size: int = 64, eval_batch_size: int | None = 256,
                 num_workers: int = 0, val_split: float = 0.0, seed: int = 0, data_root: str | None = None) -> None:
        super().__init__(data_root=data_root, batch_size=batch_size, eval_batch_size=eval_batch_size,
                         num_workers=num_workers, val_split=val_split, seed=seed)
        if not 0 < test_fraction < 1:
            raise UserError(f"test_fraction must be in (0, 1), got {test_fraction}")
        self.save_hyperparameters()
        images, labels = _digits()
        order = seeded_permutation(len(labels), seed).numpy()
        n_test = int(round(test_fraction * len(labels)))
        self._split = {False: order[:n_test], True: order[n_test:]}
        train_pixels = images[self._split[True]]
        self._spec = ImageSpec(size=8, channels=1, mean=(float(train_pixels.mean()),),
                               std=(float(train_pixels.std()),), class_names=tuple(str(d) for d in range(10)),
                               dataset="digits")

    @property
    def image_spec(self) -> ImageSpec:
        return self._spec

    def load_split(self, train: bool, augment: bool) -> Dataset:
        images, labels = _digits()
        idx = self._split[train]
        x = normalize(torch.from_numpy(images[idx]).unsqueeze(1), self._spec)
        return TensorDataset(x, torch.from_numpy(labels[idx]))
