"""Per-image scores of one data set at any (T, epsilon), each image and setting scored at most once."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

Setting = tuple[float, float]
Scorer = Callable[[Tensor, Sequence[Setting]], Tensor]  # (indices, settings) -> [len(settings), len(indices)]


class ScoreCache:
    """Known scores of a set of ``n`` images by setting (NaN = unknown); :meth:`get` scores only what is missing,
    grouping images by the settings they lack so that each group is one :func:`score_dataset`-style call."""

    def __init__(self, n: int, scorer: Scorer) -> None:
        self.n, self.scorer = n, scorer
        self.table: dict[Setting, Tensor] = {}
        self.computed = 0  # (image, setting) pairs scored here, not taken from earlier results

    def _row(self, setting: Setting) -> Tensor:
        key = (float(setting[0]), float(setting[1]))
        if key not in self.table:
            self.table[key] = torch.full((self.n,), float("nan"), dtype=torch.float64)
        return self.table[key]

    def add(self, indices: Tensor, settings: Sequence[Setting], scores: Tensor) -> None:
        """Record scores [len(settings), len(indices)] computed elsewhere."""
        for setting, row in zip(settings, scores):
            self._row(setting)[indices] = row.double().cpu()

    def get(self, indices: Tensor, settings: Sequence[Setting]) -> Tensor:
        """Scores [len(settings), len(indices)], scoring the missing (image, setting) pairs first."""
        unknown = torch.stack([self._row(s)[indices] for s in settings]).isnan()
        if unknown.any():
            patterns, group = torch.unique(unknown, dim=1, return_inverse=True)
            for g, pattern in enumerate(patterns.T):
                if pattern.any():
                    images = indices[group == g]
                    missing = [settings[i] for i in pattern.nonzero().flatten().tolist()]
                    self.add(images, missing, self.scorer(images, missing))
                    self.computed += len(images) * len(missing)
        return torch.stack([self._row(s)[indices] for s in settings])
