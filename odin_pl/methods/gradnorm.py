"""gradnorm: the L1 norm of the gradient of the cross-entropy to the uniform distribution with respect to the last
layer's weight, in closed form (Huang, Geng, Li, NeurIPS 2021).

p = softmax(f / T); d/dW of sum_c -log p_c = (1/T) (N p - 1) h^T, whose L1 norm is
    score = (1/T) ||N p - 1||_1 ||h||_1,  in [0, inf)
(the paper's KL form is this / N). T grid {1} (the paper's).
"""

from __future__ import annotations

from typing import Sequence

import math

import torch
from torch import Tensor

from odin_pl.methods.base import Method, Param, Setting
from odin_pl.methods.batch import Batch, Needs
from odin_pl.methods.features import Fit
from odin_pl.methods.registry import register_method
from odin_pl.methods.posthoc import as_rows, check_positive


T_GRID = (1.0,)
GRADNORM_RANGE = (0.0, math.inf)


def gradnorm_score(logits: Tensor, h: Tensor, temperature: float = 1.0) -> Tensor:
    """(1/T) ||N softmax(f / T) - 1||_1 ||h||_1 [B] in float64."""
    temperature = check_positive(temperature, "gradnorm", "the temperature T")
    logits = logits.double()
    p = torch.softmax(logits / temperature, dim=1)
    return (logits.shape[1] * p - 1).abs().sum(dim=1) * h.double().abs().sum(dim=1) / temperature


@register_method
class GradNorm(Method):
    name = "gradnorm"
    params = (Param("temperature", "T", T_GRID),)
    openood_grid = {"temperature": (1.0,)}  # OpenOOD's gradnorm: no search

    def needs(self, settings: Sequence[Setting], fit: Fit | None = None) -> Needs:
        return Needs(features=True)

    def score(self, batch: Batch, settings: Sequence[Setting]) -> Tensor:
        h = batch.features
        return as_rows([gradnorm_score(batch.logits, h, t) for (t,) in settings], h)

    def score_range(self, num_classes: int) -> tuple[float, float]:
        return GRADNORM_RANGE

    def check_setting(self, setting: Sequence[float]) -> Setting:
        setting = super().check_setting(setting)
        check_positive(setting[0], self.name, "the temperature T")
        return setting
