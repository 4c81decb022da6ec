"""she: the simplified Hopfield energy of the penultimate features with their predicted class's stored pattern
(Zhang, Fu, Zhang, Tan, ICLR 2023).

Fit, in float64: S_c = mean of h_i over the training images with prediction = label = c (a class with none is
refused). Score: h^T S_yhat with yhat = argmax f (the first index on ties); any finite value; no parameters.
"""

from __future__ import annotations

import math

from torch import Tensor

from odin_pl.methods.posthoc import class_means

SHE_RANGE = (-math.inf, math.inf)


def fit_she(h: Tensor, labels: Tensor, predictions: Tensor, num_classes: int) -> dict:
    """{patterns [N, D]}: the mean features of the correctly classified training images per class."""
    correct = predictions == labels
    return {"patterns": class_means(h.double()[correct], labels[correct], num_classes, "she",
                                    "correctly classified training images")}


def she_score(logits: Tensor, h: Tensor, fit: dict) -> Tensor:
    """h^T S_yhat [B] in float64."""
    return (h.double() * fit["patterns"][logits.argmax(dim=1)]).sum(dim=1)
