"""mcd and mcd_var: Monte Carlo dropout (Gal, Ghahramani, ICML 2016), from the softmax outputs of n stochastic passes.

Passes: n = 30, the model in eval mode except its nn.Dropout* modules with p > 0 (a model without one is refused);
the random generator seeded from the run seed and the batch's first global index
(``odin_pl.methods.batch.stochastic_seed``; the batch runs the passes, once for both methods).
With P_t = softmax(f_t) of pass t, a stack [n, B, N]:
    mcd     = max_c mean_t P_t,c                  in [1/N, 1]
    mcd_var = -mean_c var_t P_t,c (ddof 1)        in [-n / (4 (n - 1)), 0]
No parameters.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from odin_pl.methods.base import Method, Setting
from odin_pl.methods.batch import Batch, Needs
from odin_pl.methods.features import Fit
from odin_pl.methods.registry import register_method
from odin_pl.methods.posthoc import as_rows

from odin_pl.errors import UserError

PASSES = 30


def _checked(probabilities: Tensor) -> Tensor:
    if probabilities.dim() != 3 or probabilities.shape[0] < 2:
        raise UserError(f"mcd: needs the softmax outputs of at least 2 passes as [passes, B, N], got shape "
                        f"{tuple(probabilities.shape)}")
    return probabilities.double()


def mcd_score(probabilities: Tensor) -> Tensor:
    """max_c mean_t P_t,c [B] in float64."""
    return _checked(probabilities).mean(dim=0).amax(dim=1)


def mcd_var_score(probabilities: Tensor) -> Tensor:
    """-mean_c var_t P_t,c (ddof 1) [B] in float64."""
    return -_checked(probabilities).var(dim=0).mean(dim=1)


def mcd_range(num_classes: int) -> tuple[float, float]:
    return 1.0 / num_classes, 1.0


def mcd_var_range(passes: int = PASSES) -> tuple[float, float]:
    return -passes / (4 * (passes - 1)), 0.0


def probabilities(batch: Batch) -> Tensor:
    """softmax of the batch's PASSES stochastic passes [PASSES, B, N] (float64)."""
    return torch.softmax(batch.stochastic_logits(PASSES).double(), dim=2)


@register_method
class MCD(Method):
    name = "mcd"

    def needs(self, settings: Sequence[Setting], fit: Fit | None = None) -> Needs:
        return Needs(passes=PASSES)

    def score(self, batch: Batch, settings: Sequence[Setting]) -> Tensor:
        return as_rows([mcd_score(probabilities(batch))] * len(settings), batch.x)

    def score_range(self, num_classes: int) -> tuple[float, float]:
        return mcd_range(num_classes)


@register_method
class MCDVar(MCD):
    name = "mcd_var"

    def score(self, batch: Batch, settings: Sequence[Setting]) -> Tensor:
        return as_rows([mcd_var_score(probabilities(batch))] * len(settings), batch.x)

    def score_range(self, num_classes: int) -> tuple[float, float]:
        return mcd_var_range()
