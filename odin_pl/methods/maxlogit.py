"""maxlogit: the largest logit, max_i f_i(x) (Hendrycks et al., ICML 2022)."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from odin_pl.methods.base import Method, Setting
from odin_pl.methods.registry import register_method
from odin_pl.methods.batch import Batch


@register_method
class MaxLogit(Method):
    name = "maxlogit"

    def score(self, batch: Batch, settings: Sequence[Setting]) -> Tensor:
        return batch.logits.amax(dim=1).expand(len(settings), -1).clone()
