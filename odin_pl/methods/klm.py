"""klm: KL matching of the softmax to the typical softmax of the predicted classes (Hendrycks, Basart, Mazeika, Zou,
Kwon, Mostajabi, Steinhardt, Song, ICML 2022).

Fit, in float64, from the training logits (labels unused): d_k = mean softmax(f_i) over the training images
predicted k, for every class k predicted at least once (the others are skipped).
Score: -min_k KL(p || d_k) with p = softmax(f), KL(p || d) = sum_c p_c (log p_c - log d_c), terms with p_c = 0
count 0, a term with d_c = 0 < p_c is +inf; range (-inf, 0]; no parameters.
"""

from __future__ import annotations

from typing import Sequence

import math

import torch
from torch import Tensor

from odin_pl.methods.base import FitData, Method, Setting
from odin_pl.methods.batch import Batch
from odin_pl.methods.registry import register_method
from odin_pl.methods.posthoc import as_rows
from odin_pl.errors import UserError

KLM_RANGE = (-math.inf, 0.0)


def fit_klm(logits: Tensor) -> dict:
    """{typical [K, N]: d_k of the K predicted classes, classes [K]: their indices}."""
    if len(logits) == 0:
        raise UserError("klm: no training logits to fit the typical softmax outputs on")
    p = torch.softmax(logits.double(), dim=1)
    predictions = p.argmax(dim=1)
    classes = predictions.unique()
    return {"typical": torch.stack([p[predictions == k].mean(dim=0) for k in classes]), "classes": classes}


def klm_score(logits: Tensor, fit: dict) -> Tensor:
    """-min_k KL(softmax(f) || d_k) [B] in float64, as sum_c p_c log p_c - p . log d_k ([B, K] memory)."""
    log_p = torch.log_softmax(logits.double(), dim=1)
    p = log_p.exp()
    typical = fit["typical"]
    cross = p @ torch.where(typical > 0, typical.log(), 0.0).T
    kl = torch.where(p > 0, p * log_p, 0.0).sum(dim=1, keepdim=True) - cross
    impossible = (p > 0).double() @ (typical == 0).double().T > 0  # some p_c > 0 where d_kc = 0
    return -torch.where(impossible, math.inf, kl).amin(dim=1)


@register_method
class KLM(Method):
    name = "klm"
    needs_fit = True
    openood_fit_split = "val"  # OpenOOD fits klm on its ID val list

    def fit(self, data: FitData, settings: Sequence[Setting]) -> dict[str, Tensor]:
        return fit_klm(data.logits)

    def score(self, batch: Batch, settings: Sequence[Setting]) -> Tensor:
        logits = batch.logits
        return as_rows([klm_score(logits, batch.fit(self.name))] * len(settings), logits)

    def score_range(self, num_classes: int) -> tuple[float, float]:
        return KLM_RANGE
