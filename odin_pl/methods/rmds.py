"""rmds: the relative Mahalanobis distance (Ren, Fort, Liu, Roy, Padhy, Lakshminarayanan, 2021).

Fit, in float64, from the training features h_i [n, D] with labels y_i (every class present):
    mu_c    = mean of h_i over class c,  Sigma  = (1/n) sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T   (as mahalanobis)
    mu_0    = mean of all h_i,           Sigma0 = (1/n) sum_i (h_i - mu_0)(h_i - mu_0)^T
    P = pinv(Sigma), P0 = pinv(Sigma0); both scatters must have full rank (refused otherwise).
Score: d_c(h) = (h - mu_c)^T P (h - mu_c), d_0(h) = (h - mu_0)^T P0 (h - mu_0); score = -min_c (d_c - d_0), any
finite value; no parameters.
"""

from __future__ import annotations

import math

from torch import Tensor

from odin_pl.methods.posthoc import class_means, tied_precision

RMDS_RANGE = (-math.inf, math.inf)


def fit_rmds(h: Tensor, labels: Tensor, num_classes: int) -> dict:
    """{means [N, D], precision [D, D], background_mean [D], background_precision [D, D]}."""
    h = h.double()
    means = class_means(h, labels, num_classes, "rmds")
    background_mean = h.mean(dim=0)
    return {"means": means, "precision": tied_precision(h - means[labels], "rmds", "tied class covariance"),
            "background_mean": background_mean,
            "background_precision": tied_precision(h - background_mean, "rmds", "covariance")}


def _squared(diff: Tensor, precision: Tensor) -> Tensor:
    return ((diff @ precision) * diff).sum(dim=-1)


def rmds_score(h: Tensor, fit: dict) -> Tensor:
    """-min_c (d_c(h) - d_0(h)) [B]."""
    h = h.double()
    class_distances = _squared(h[:, None, :] - fit["means"][None], fit["precision"])
    background = _squared(h - fit["background_mean"], fit["background_precision"])
    return -(class_distances - background[:, None]).amin(dim=1)
