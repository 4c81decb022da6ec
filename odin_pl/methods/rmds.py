"""rmds: the relative Mahalanobis distance (Ren, Fort, Liu, Roy, Padhy, Lakshminarayanan, 2021).

Fit, in float64, from the training features h_i [n, D] with labels y_i (every class present):
    mu_c    = mean of h_i over class c,  Sigma  = (1/n) sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T   (as mahalanobis)
    mu_0    = mean of all h_i,           Sigma0 = (1/n) sum_i (h_i - mu_0)(h_i - mu_0)^T
    P = pinv(Sigma), P0 = pinv(Sigma0); both scatters must have full rank (refused otherwise).
Score: d_c(h) = (h - mu_c)^T P (h - mu_c), d_0(h) = (h - mu_0)^T P0 (h - mu_0); score = -min_c (d_c - d_0), any
finite value; no parameters.
"""

from __future__ import annotations

from typing import Sequence

import math

from torch import Tensor

from odin_pl.methods.base import FitData, Method, Setting
from odin_pl.methods.batch import Batch, Needs
from odin_pl.methods.features import Fit
from odin_pl.methods.registry import register_method
from odin_pl.methods.posthoc import as_rows

from odin_pl.methods.posthoc import class_means, tied_precision

RMDS_RANGE = (-math.inf, math.inf)


def fit_rmds(h: Tensor, labels: Tensor, num_classes: int) -> dict:
    """{means [N, D], precision [D, D], background_mean [D], background_precision [D, D]; for scoring without a
    [B, N, D] tensor: projected_means = (mu_c - mu_0) P [N, D], mean_terms = (mu_c - mu_0)^T P (mu_c - mu_0) [N]}."""
    h = h.double()
    means = class_means(h, labels, num_classes, "rmds")
    background_mean = h.mean(dim=0)
    precision = tied_precision(h - means[labels], "rmds", "tied class covariance")
    shifted = means - background_mean
    projected = shifted @ precision
    return {"means": means, "precision": precision, "background_mean": background_mean,
            "background_precision": tied_precision(h - background_mean, "rmds", "covariance"),
            "projected_means": projected, "mean_terms": (projected * shifted).sum(dim=1)}


def rmds_score(h: Tensor, fit: dict) -> Tensor:
    """-min_c (d_c(h) - d_0(h)) [B], with d_c = x^T P x - 2 x^T P (mu_c - mu_0) + (mu_c - mu_0)^T P (mu_c - mu_0)
    for x = h - mu_0."""
    x = h.double() - fit["background_mean"]
    class_distances = ((x @ fit["precision"]) * x).sum(dim=1, keepdim=True) - 2 * x @ fit["projected_means"].T \
        + fit["mean_terms"]
    background = ((x @ fit["background_precision"]) * x).sum(dim=1)
    return background - class_distances.amin(dim=1)


@register_method
class RMDS(Method):
    name = "rmds"
    needs_fit = True

    def needs(self, settings: Sequence[Setting], fit: Fit | None = None) -> Needs:
        return Needs(features=True)

    def fit(self, data: FitData, settings: Sequence[Setting]) -> dict[str, Tensor]:
        return fit_rmds(data.features, data.labels, data.logits.shape[1])

    def score(self, batch: Batch, settings: Sequence[Setting]) -> Tensor:
        h = batch.features
        return as_rows([rmds_score(h, batch.fit(self.name))] * len(settings), h)

    def score_range(self, num_classes: int) -> tuple[float, float]:
        return RMDS_RANGE
