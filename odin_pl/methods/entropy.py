"""entropy: the negative entropy of the softmax, -H(p) = sum_i p_i log p_i with p = softmax(f(x)).

Computed as sum_i softmax(f)_i * log_softmax(f)_i: no clipping, and finite where some p_i underflows to 0.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from odin_pl.methods.base import Method, Setting
from odin_pl.methods.registry import register_method
from odin_pl.methods.batch import Batch


@register_method
class Entropy(Method):
    name = "entropy"

    def score(self, batch: Batch, settings: Sequence[Setting]) -> Tensor:
        logits = batch.logits
        negative_entropy = (torch.softmax(logits, dim=1) * torch.log_softmax(logits, dim=1)).sum(dim=1)
        return negative_entropy.expand(len(settings), -1).clone()

    def score_range(self, num_classes: int) -> tuple[float, float]:
        return -math.log(num_classes), 0.0
