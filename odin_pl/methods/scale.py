"""scale: the energy of the penultimate features scaled by their own top-k share (Xu, Lian, Sahoo, Shah, ICLR 2024).

At percentile p (a percent), k and the top-k indices K as ash (k = D - round(D p / 100), stable descending sort):
r = exp(s1 / s2) with s1 = sum h, s2 = sum_K h (r = 1 where s2 = 0, i.e. h = 0); score = logsumexp(g(r h)) =
logsumexp(r (f - b) + b), any finite value. The features must be >= 0 (checked on the training features at fit:
``odin_pl.methods.ash.fit_nonnegative``). p grid as ash; ties: 85, then larger p.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from odin_pl.methods import ash
from odin_pl.methods.ash import exp_share, top_sums
from odin_pl.methods.base import Setting
from odin_pl.methods.batch import Batch
from odin_pl.methods.registry import register_method
from odin_pl.methods.posthoc import as_rows

P_GRID = ash.P_GRID
PAPER_P = 85.0
SCALE_RANGE = (-math.inf, math.inf)


def tie_key(setting: Sequence[float]) -> tuple:
    """p = 85 first, then larger p."""
    (p,) = setting
    return p != PAPER_P, -p


def scale_score(logits: Tensor, h: Tensor, bias: Tensor, percentile: float) -> Tensor:
    """logsumexp(r (f - b) + b) [B] in float64."""
    h = h.double()
    _, s1, s2 = top_sums(h, percentile, "scale")
    r = exp_share(s1, s2)
    bias = bias.double()
    return torch.logsumexp(r[:, None] * (logits.double() - bias) + bias, dim=1)


@register_method
class SCALE(ash._Shaping):
    name = "scale"

    def score(self, batch: Batch, settings: Sequence[Setting]) -> Tensor:
        h = batch.features
        return as_rows([scale_score(batch.logits, h, batch.classifier.bias, p) for (p,) in settings], h)

    def score_range(self, num_classes: int) -> tuple[float, float]:
        return SCALE_RANGE

    def tie_key(self, setting: Setting) -> tuple:
        return tie_key(setting)
