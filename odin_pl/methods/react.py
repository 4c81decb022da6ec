"""react: the energy of the logits of clipped penultimate features (Sun, Guo, Li, NeurIPS 2021).

Fit: c_p = the p-th percentile (numpy's linear interpolation) of all entries of the training features h, one
scalar per p of the grid (p in percent: 90, where pytorch-ood's ``percentile`` is the fraction 0.9).
Score: logsumexp(g(min(h(x), c_p))) with g the classifier: the energy at T = 1 of the clipped features' logits.
Ties between settings: p = 90 (the paper's) first, then larger p.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from odin_pl.methods.features import Fit
from odin_pl.methods.base import FitData, Method, Param, Setting
from odin_pl.methods.registry import register_method
from odin_pl.methods.batch import Batch, Needs
from odin_pl.errors import UserError

PAPER_PERCENTILE = 90.0


def threshold(fit: Fit, percentile: float) -> float:
    """c_p of the fit, or a ValueError when the fit has none for p."""
    matches = (fit["percentiles"] == percentile).nonzero().flatten()
    if len(matches) == 0:
        raise UserError(f"react: the fit has thresholds for p in {fit['percentiles'].tolist()}, not p = "
                        f"{percentile:g}; fit again with p in the grid")
    return float(fit["thresholds"][matches[0]])


@register_method
class ReAct(Method):
    name = "react"
    params = (Param("percentile", "p", (85.0, 90.0, 95.0, 99.0)),)
    needs_fit = True
    openood_grid = {"percentile": (85.0, 90.0, 95.0, 99.0)}
    openood_fit_split = "val"  # the threshold from ID-val features

    def needs(self, settings: Sequence[Setting], fit: Fit | None = None) -> Needs:
        return Needs(features=True)

    def fit(self, data: FitData, settings: Sequence[Setting]) -> dict[str, Tensor]:
        percentiles = sorted({p for (p,) in settings})
        values = np.percentile(data.features.cpu().numpy().ravel(), percentiles, method="linear")
        return {"percentiles": torch.tensor(percentiles, dtype=torch.float64),
                "thresholds": torch.as_tensor(values, dtype=torch.float64)}

    def settings_for_fit(self, settings: Sequence[Setting], fit: Fit) -> tuple[list[Setting], str | None]:
        for (p,) in settings:
            threshold(fit, p)
        return list(settings), None

    def score(self, batch: Batch, settings: Sequence[Setting]) -> Tensor:
        fit, h, classifier = batch.fit(self.name), batch.features, batch.classifier
        with torch.no_grad():
            return torch.stack([torch.logsumexp(classifier(h.clamp(max=threshold(fit, p))), dim=1)
                                for (p,) in settings])

    def tie_key(self, setting: Setting) -> tuple:
        (p,) = setting
        return p != PAPER_PERCENTILE, -p

    def check_setting(self, setting: Sequence[float]) -> Setting:
        setting = super().check_setting(setting)
        if not 0 < setting[0] <= 100:
            raise UserError(f"react: the percentile p must lie in (0, 100] (a percent, e.g. 90), got {setting[0]!r}")
        return setting
