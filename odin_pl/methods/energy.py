"""energy: the negative free energy T * logsumexp(f(x) / T) (Liu et al., NeurIPS 2020).

The paper fixes T = 1; the grid over ODIN's temperatures is an extension. Ties between settings: smaller T.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from odin_pl.methods.base import Method, Param, Setting
from odin_pl.methods.registry import register_method
from odin_pl.methods.batch import Batch
from odin_pl.methods.odin import PAPER_TEMPERATURES, check_temperature


@register_method
class Energy(Method):
    name = "energy"
    openood_grid = {"temperature": (1.0,)}  # OpenOOD's ebo sweep
    params = (Param("temperature", "T", PAPER_TEMPERATURES),)

    def score(self, batch: Batch, settings: Sequence[Setting]) -> Tensor:
        return torch.stack([t * torch.logsumexp(batch.logits / t, dim=1) for (t,) in settings])

    def check_setting(self, setting: Sequence[float]) -> Setting:
        setting = super().check_setting(setting)
        check_temperature(setting[0])
        return setting
