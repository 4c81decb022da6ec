"""she: the simplified Hopfield energy of the penultimate features with their predicted class's stored pattern
(Zhang, Fu, Zhang, Tan, ICLR 2023).

Fit, in float64: S_c = mean of h_i over the training images with prediction = label = c (a class with none is
refused). Score: h^T S_yhat with yhat = argmax f (the first index on ties); any finite value; no parameters.
"""

from __future__ import annotations

from typing import Sequence

import math

from torch import Tensor

from odin_pl.methods.posthoc import class_means
from odin_pl.methods.base import FitData, Method, Setting
from odin_pl.methods.batch import Batch, Needs
from odin_pl.methods.features import Fit
from odin_pl.methods.registry import register_method
from odin_pl.methods.posthoc import as_rows

SHE_RANGE = (-math.inf, math.inf)


def fit_she(h: Tensor, labels: Tensor, predictions: Tensor, num_classes: int) -> dict:
    """{patterns [N, D]}: the mean features of the correctly classified training images per class."""
    correct = predictions == labels
    return {"patterns": class_means(h.double()[correct], labels[correct], num_classes, "she",
                                    "correctly classified training images")}


def she_score(logits: Tensor, h: Tensor, fit: dict) -> Tensor:
    """h^T S_yhat [B] in float64."""
    return (h.double() * fit["patterns"][logits.argmax(dim=1)]).sum(dim=1)


@register_method
class SHE(Method):
    name = "she"
    needs_fit = True

    def needs(self, settings: Sequence[Setting], fit: Fit | None = None) -> Needs:
        return Needs(features=True)

    def fit(self, data: FitData, settings: Sequence[Setting]) -> dict[str, Tensor]:
        return fit_she(data.features, data.labels, data.predictions, data.logits.shape[1])

    def score(self, batch: Batch, settings: Sequence[Setting]) -> Tensor:
        h = batch.features
        return as_rows([she_score(batch.logits, h, batch.fit(self.name))] * len(settings), h)

    def score_range(self, num_classes: int) -> tuple[float, float]:
        return SHE_RANGE
