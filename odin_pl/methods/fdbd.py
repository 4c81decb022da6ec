"""fdbd: the mean distance of the features to the predicted class's decision boundaries, normalized (Liu, Qin, ICML
2024).

Fit, in float64: mu = mean of the training features h; N = 1 or two equal rows of W are refused (no boundary).
Score, with yhat = argmax f (the first index on ties):
    (1/(N - 1)) sum_{c != yhat} |f_yhat - f_c| / ||w_yhat - w_c||  /  max(n(h), 1e-8),   in [0, inf)
normalizer n: DISTANCE = ||h - mu|| (the paper's), NORM = ||h||; grid {DISTANCE, NORM}, ties: the paper's first.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from odin_pl.methods.base import FitData, Method, Param, Setting
from odin_pl.methods.batch import Batch, Needs
from odin_pl.methods.features import Fit
from odin_pl.methods.registry import register_method
from odin_pl.methods.posthoc import as_rows
from odin_pl.errors import UserError

DISTANCE, NORM = 0.0, 1.0  # the normalizer in a setting
NORMALIZER_GRID = (DISTANCE, NORM)
FLOOR = 1e-8
FDBD_RANGE = (0.0, math.inf)


def tie_key(setting: Sequence[float]) -> tuple:
    """The paper's normalizer (the distance to mu) first."""
    (normalizer,) = setting
    return (normalizer != DISTANCE,)


def fit_fdbd(h: Tensor, weight: Tensor) -> dict:
    """{mean [D], boundary_norms [N, N]: ||w_i - w_j|| (1 on the diagonal)}."""
    weight = weight.double()
    n = weight.shape[0]
    if n < 2:
        raise UserError("fdbd: the classifier has a single output, so there is no decision boundary to measure")
    norms = torch.cdist(weight, weight)
    off_diagonal = ~torch.eye(n, dtype=torch.bool)
    if bool((norms[off_diagonal] == 0).any()):
        i, j = (norms + torch.eye(n, dtype=torch.float64) == 0).nonzero()[0].tolist()
        raise UserError(f"fdbd: classes {i} and {j} have equal classifier weights, so their decision boundary is "
                        "undefined; drop fdbd from --methods for this model")
    return {"mean": h.double().mean(dim=0), "boundary_norms": torch.where(off_diagonal, norms, 1.0)}


def fdbd_score(logits: Tensor, h: Tensor, fit: dict, normalizer: float = DISTANCE) -> Tensor:
    """The normalized mean boundary distance [B] in float64."""
    if normalizer not in NORMALIZER_GRID:
        raise UserError(f"fdbd: the normalizer must be {DISTANCE:g} (distance to the training mean) or {NORM:g} "
                        f"(feature norm), got {normalizer!r}")
    logits, h = logits.double(), h.double()
    predicted = logits.argmax(dim=1)
    gaps = (logits.gather(1, predicted[:, None]) - logits).abs()
    boundary = (gaps / fit["boundary_norms"][predicted]).sum(dim=1) / (logits.shape[1] - 1)
    scale = (h - fit["mean"]).norm(dim=1) if normalizer == DISTANCE else h.norm(dim=1)
    return boundary / scale.clamp_min(FLOOR)


@register_method
class FDBD(Method):
    name = "fdbd"
    params = (Param("normalizer", "normalizer (0: distance to the mean, 1: norm)", NORMALIZER_GRID),)
    openood_grid = {"normalizer": (DISTANCE,)}  # OpenOOD's fdbd: the paper's distance to the mean, no search
    needs_fit = True

    def needs(self, settings: Sequence[Setting], fit: Fit | None = None) -> Needs:
        return Needs(features=True)

    def fit(self, data: FitData, settings: Sequence[Setting]) -> dict[str, Tensor]:
        return fit_fdbd(data.features, data.classifier.weight)

    def score(self, batch: Batch, settings: Sequence[Setting]) -> Tensor:
        h, fit = batch.features, batch.fit(self.name)
        return as_rows([fdbd_score(batch.logits, h, fit, normalizer) for (normalizer,) in settings], h)

    def score_range(self, num_classes: int) -> tuple[float, float]:
        return FDBD_RANGE

    def tie_key(self, setting: Setting) -> tuple:
        return tie_key(setting)

    def check_setting(self, setting: Sequence[float]) -> Setting:
        setting = super().check_setting(setting)
        if setting[0] not in NORMALIZER_GRID:
            raise UserError(f"fdbd: the normalizer must be {DISTANCE:g} (distance to the training mean) or {NORM:g} "
                            f"(the feature norm), got {setting[0]!r}")
        return setting
