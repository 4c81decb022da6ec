"""tempscale: the maximum softmax after temperature scaling fitted for calibration (Guo, Pleiss, Sun, Weinberger,
ICML 2017).

Fit, in float64, on labelled held-out in-distribution logits f_i [n, N] with labels y_i (never the training
split): beta = 1/T > 0 minimizing NLL(beta) = mean_i (logsumexp(beta f_i) - beta f_iy). NLL is convex in beta with
NLL'(beta) = mean_i (E_softmax(beta f_i)[f_i] - f_iy), increasing from NLL'(0) = mean_i (mean_c f_ic - f_iy) to
mean_i (max_c f_ic - f_iy) >= 0; beta* is its root (bracketed, then bisected to float64 precision). Refused when
no finite positive root exists: NLL'(0) >= 0, or every image classified correctly (NLL' < 0 everywhere).
Score: max softmax(f / T*) = max softmax(beta* f), in [1/N, 1]. No parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor

from typing import Sequence

from odin_pl.methods.base import FitData, Method, Setting
from odin_pl.methods.batch import Batch
from odin_pl.methods.registry import register_method
from odin_pl.methods.posthoc import as_rows
from odin_pl.errors import UserError

BETA_LIMIT = 2.0**60


def nll_slope(logits: Tensor, labels: Tensor, beta: float) -> float:
    """NLL'(beta) = mean_i (sum_c softmax(beta f_i)_c f_ic - f_iy), float64."""
    p = torch.softmax(beta * logits, dim=1)
    return float(((p * logits).sum(dim=1) - logits.gather(1, labels[:, None])[:, 0]).mean())


def fit_tempscale(logits: Tensor, labels: Tensor) -> dict:
    """{temperature: T* = 1 / beta*} on held-out logits [n, N] and labels [n]."""
    if len(logits) == 0:
        raise UserError("tempscale: no held-out labelled images to fit the temperature on")
    logits = logits.double()
    if nll_slope(logits, labels, 0.0) >= 0:
        raise UserError("tempscale: the held-out logits rank the true class no higher than the mean logit on "
                        "average, so the NLL has no minimum at a positive 1/T; check the labels of the held-out split")
    margins = logits.amax(dim=1) - logits.gather(1, labels[:, None])[:, 0]
    lo, hi = 0.0, 1.0
    while float(margins.max()) > 0 and nll_slope(logits, labels, hi) < 0 and hi <= BETA_LIMIT:
        lo, hi = hi, 2 * hi
    if float(margins.max()) == 0 or hi > BETA_LIMIT:
        raise UserError(f"tempscale: the NLL on the {len(logits)} held-out images keeps falling as T -> 0 (every "
                        "image classified correctly): no finite temperature; fit on a held-out split with errors "
                        "(the validation split, not the training split)")
    while True:
        mid = (lo + hi) / 2
        if not lo < mid < hi:
            break
        if nll_slope(logits, labels, mid) < 0:
            lo = mid
        else:
            hi = mid
    return {"temperature": torch.tensor(1.0 / ((lo + hi) / 2), dtype=torch.float64)}


def tempscale_score(logits: Tensor, fit: dict) -> Tensor:
    """max softmax(f / T*) [B] in float64."""
    return torch.softmax(logits.double() / fit["temperature"], dim=1).amax(dim=1)


def tempscale_range(num_classes: int) -> tuple[float, float]:
    return 1.0 / num_classes, 1.0


@register_method
class TempScale(Method):
    name = "tempscale"
    needs_fit = True
    fit_split = "heldout"
    openood_fit_split = "val"  # OpenOOD fits temp_scaling on its ID val list

    def fit(self, data: FitData, settings: Sequence[Setting]) -> dict[str, Tensor]:
        """T* on the held-out split's logits and labels (a label outside the classes: no labels, refused)."""
        labels, num_classes = data.labels, data.logits.shape[1]
        if len(labels) and not bool(((labels >= 0) & (labels < num_classes)).all()):
            raise UserError(f"tempscale: the held-out images have no class labels (labels {labels.min().item()} .. "
                            f"{labels.max().item()}, not 0 .. {num_classes - 1}); fit it on a labelled "
                            "in-distribution split (a DataModule with val_split > 0) or drop it from --methods")
        return fit_tempscale(data.logits, labels)

    def score(self, batch: Batch, settings: Sequence[Setting]) -> Tensor:
        logits = batch.logits
        return as_rows([tempscale_score(logits, batch.fit(self.name))] * len(settings), logits)

    def score_range(self, num_classes: int) -> tuple[float, float]:
        return tempscale_range(num_classes)
