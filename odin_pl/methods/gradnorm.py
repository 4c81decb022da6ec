"""gradnorm: the L1 norm of the gradient of the cross-entropy to the uniform distribution with respect to the last
layer's weight, in closed form (Huang, Geng, Li, NeurIPS 2021).

p = softmax(f / T); d/dW of sum_c -log p_c = (1/T) (N p - 1) h^T, whose L1 norm is
    score = (1/T) ||N p - 1||_1 ||h||_1,  in [0, inf)
(the paper's KL form is this / N). T grid {1} (the paper's).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from odin_pl.methods.posthoc import check_positive

T_GRID = (1.0,)
GRADNORM_RANGE = (0.0, math.inf)


def gradnorm_score(logits: Tensor, h: Tensor, temperature: float = 1.0) -> Tensor:
    """(1/T) ||N softmax(f / T) - 1||_1 ||h||_1 [B] in float64."""
    temperature = check_positive(temperature, "gradnorm", "the temperature T")
    logits = logits.double()
    p = torch.softmax(logits / temperature, dim=1)
    return (logits.shape[1] * p - 1).abs().sum(dim=1) * h.double().abs().sum(dim=1) / temperature
