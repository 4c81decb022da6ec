"""Binned statistics behind the density and conditional-expectation figures (paper, Figure 5)."""

from __future__ import annotations

from typing import Iterable

import numpy as np
from torch import Tensor

MIN_BIN_COUNT = 5  # E[y | x] is reported only for bins holding at least this many images


def shared_edges(groups: Iterable[Tensor], bins: int = 40) -> np.ndarray:
    """``bins + 1`` evenly spaced edges spanning the pooled range of all groups (one x-axis for every set)."""
    values = np.concatenate([np.asarray(g, dtype=np.float64).ravel() for g in groups])
    low, high = float(values.min()), float(values.max())
    return np.linspace(low, high if high > low else low + 1e-12, bins + 1)


def density(values: Tensor, edges: np.ndarray) -> list[float]:
    """Histogram estimate of the probability density on ``edges`` (integrates to the share inside the edges)."""
    counts, _ = np.histogram(np.asarray(values, dtype=np.float64), bins=edges)
    return (counts / (len(values) * np.diff(edges))).tolist()


def binned_mean(x: Tensor, y: Tensor, edges: np.ndarray) -> tuple[list[float | None], list[int]]:
    """E[y | x in bin b] and the bin counts; None where a bin holds fewer than MIN_BIN_COUNT images."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    which = np.digitize(x, edges[1:-1])  # bin b holds edges[b] <= x < edges[b + 1]; the last one is closed
    counts = np.bincount(which, minlength=len(edges) - 1)
    sums = np.bincount(which, weights=y, minlength=len(edges) - 1)
    return [float(s / c) if c >= MIN_BIN_COUNT else None for s, c in zip(sums, counts)], counts.tolist()


def centers(edges: np.ndarray) -> list[float]:
    return ((edges[:-1] + edges[1:]) / 2).tolist()
