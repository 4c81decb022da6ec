"""dice: the energy of a classifier sparsified by the weights' mean contributions (Sun, Li, ECCV 2022).

Fit, in float64: m = mean of the training features h; contrib = m * W [N, D] (broadcast over rows); t_p = numpy's
linear percentile of its N D entries at p (a percent); W_p = W where contrib > t_p (strict), 0 elsewhere.
Score: logsumexp(h W_p^T + b), any finite value. p grid {90} (others through --params); ties: larger p.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from odin_pl.methods.base import FitData, Method, Param, Setting
from odin_pl.methods.batch import Batch, Needs
from odin_pl.methods.features import Fit
from odin_pl.methods.registry import register_method
from odin_pl.methods.posthoc import as_rows
from odin_pl.errors import UserError

P_GRID = (90.0,)
DICE_RANGE = (-math.inf, math.inf)


def tie_key(setting: Sequence[float]) -> tuple:
    """Larger p first."""
    (p,) = setting
    return (-p,)


def fit_dice(h: Tensor, weight: Tensor, percentiles: Sequence[float]) -> dict:
    """{percentiles [m], weights [m, N, D]: W_p per p}."""
    for p in percentiles:
        if not 0 <= p < 100:
            raise UserError(f"dice: the percentile p must lie in [0, 100) (a percent, e.g. 90), got {p!r}")
    weight = weight.double()
    contrib = h.double().mean(dim=0)[None, :] * weight
    thresholds = np.percentile(contrib.numpy().ravel(), list(percentiles), method="linear")
    masked = torch.stack([torch.where(contrib > float(t), weight, 0.0) for t in thresholds])
    return {"percentiles": torch.tensor(list(percentiles), dtype=torch.float64), "weights": masked}


def dice_score(h: Tensor, bias: Tensor, fit: dict, percentile: float) -> Tensor:
    """logsumexp(h W_p^T + b) [B] in float64."""
    matches = (fit["percentiles"] == percentile).nonzero().flatten()
    if len(matches) == 0:
        raise UserError(f"dice: the fit has p in {fit['percentiles'].tolist()}, not p = {percentile:g}; fit again "
                        "with p in the grid")
    logits = torch.nn.functional.linear(h.double(), fit["weights"][int(matches[0])], bias.double())
    return torch.logsumexp(logits, dim=1)


@register_method
class DICE(Method):
    name = "dice"
    params = (Param("percentile", "p", P_GRID),)
    openood_grid = {"percentile": (90.0,)}  # OpenOOD's dice: no search, p 90
    needs_fit = True

    def needs(self, settings: Sequence[Setting], fit: Fit | None = None) -> Needs:
        return Needs(features=True)

    def fit(self, data: FitData, settings: Sequence[Setting]) -> dict[str, Tensor]:
        return fit_dice(data.features, data.classifier.weight, sorted({p for (p,) in settings}))

    def score(self, batch: Batch, settings: Sequence[Setting]) -> Tensor:
        h, fit = batch.features, batch.fit(self.name)
        return as_rows([dice_score(h, batch.classifier.bias, fit, p) for (p,) in settings], h)

    def score_range(self, num_classes: int) -> tuple[float, float]:
        return DICE_RANGE

    def tie_key(self, setting: Setting) -> tuple:
        return tie_key(setting)
