"""Per-image scores of one data set at any (method, setting), each image and setting scored at most once."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

Key = tuple[str, tuple[float, ...]]  # (method, setting)
Scorer = Callable[[Tensor, Sequence[Key]], Tensor]  # (indices, keys) -> [len(keys), len(indices)]


def key(method: str, setting: Sequence[float]) -> Key:
    return method, tuple(float(v) for v in setting)


class ScoreCache:
    """Known scores of a set of ``n`` images by (method, setting) (NaN = unknown); :meth:`get` scores only what is
    missing, grouping images by the keys they lack so that each group is one :func:`score_plan`-style call."""

    def __init__(self, n: int, scorer: Scorer) -> None:
        self.n, self.scorer = n, scorer
        self.table: dict[Key, Tensor] = {}
        self.computed = 0  # (image, key) pairs scored here, not taken from earlier results

    def _row(self, k: Key) -> Tensor:
        k = key(*k)
        if k not in self.table:
            self.table[k] = torch.full((self.n,), float("nan"), dtype=torch.float64)
        return self.table[k]

    def add(self, indices: Tensor, keys: Sequence[Key], scores: Tensor) -> None:
        """Record scores [len(keys), len(indices)] computed elsewhere."""
        for k, row in zip(keys, scores):
            self._row(k)[indices] = row.double().cpu()

    def get(self, indices: Tensor, keys: Sequence[Key]) -> Tensor:
        """Scores [len(keys), len(indices)], scoring the missing (image, key) pairs first."""
        unknown = torch.stack([self._row(k)[indices] for k in keys]).isnan()
        if unknown.any():
            patterns, group = torch.unique(unknown, dim=1, return_inverse=True)
            for g, pattern in enumerate(patterns.T):
                if pattern.any():
                    images = indices[group == g]
                    missing = [keys[i] for i in pattern.nonzero().flatten().tolist()]
                    self.add(images, missing, self.scorer(images, missing))
                    self.computed += len(images) * len(missing)
        return torch.stack([self._row(k)[indices] for k in keys])
