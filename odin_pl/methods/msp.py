"""msp: the maximum softmax probability, max_i softmax(f(x))_i (Hendrycks & Gimpel, ICLR 2017), the baseline.

:func:`max_softmax` is S(x; T) = max_i softmax(f(x) / T)_i, which ODIN scores at its temperature.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from odin_pl.methods.base import Method, Setting
from odin_pl.methods.registry import register_method
from odin_pl.methods.batch import Batch


def max_softmax(logits: Tensor, temperature: float) -> Tensor:
    """S(x; T) = max_i softmax(f(x) / T)_i for each row of logits."""
    return torch.softmax(logits / temperature, dim=1).amax(dim=1)


@register_method
class MSP(Method):
    name = "msp"
    roles = frozenset({"baseline"})

    def score(self, batch: Batch, settings: Sequence[Setting]) -> Tensor:
        return max_softmax(batch.logits, 1.0).expand(len(settings), -1).clone()

    def score_range(self, num_classes: int) -> tuple[float, float]:
        return 1.0 / num_classes, 1.0

    def named(self, setting: Setting) -> dict[str, float]:
        """ODIN's parameters at which it equals MSP (T = 1, epsilon = 0), as the paper reports the baseline."""
        return {"temperature": 1.0, "epsilon": 0.0}
