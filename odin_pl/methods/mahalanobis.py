"""mahalanobis: the negative Mahalanobis distance of the penultimate features to the nearest class mean under a
tied covariance (Lee, Lee, Lee, Shin, NeurIPS 2018), penultimate layer only (no feature ensemble, no logistic
regression), with the paper's input preprocessing.

Fit, from the training features h_i with labels y_i (n images, classes 0 .. C-1), in float64:
    mu_c  = mean of h_i over the images of class c
    Sigma = (1/n) sum_c sum_{i: y_i = c} (h_i - mu_c)(h_i - mu_c)^T,   P = pinv(Sigma)   (Sigma must have full rank)
Score at epsilon:
    d_c(x)  = (h(x) - mu_c)^T P (h(x) - mu_c),   M(x) = max_c -d_c(x)           (higher = more in-distribution)
    c_hat   = argmin_c d_c(x) at the clean input,  g = d d_c_hat(x) / dx
    x_tilde = x - epsilon * s / std  with s = +1 where g >= 0, else -1 (ODIN's sign+)
    score   = M(x_tilde)   (the max over classes taken again); epsilon = 0 is M(x)
One gradient serves every epsilon. Ties between settings: smaller epsilon.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from odin_pl.methods.features import Fit
from odin_pl.methods.base import FitData, Method, Param, Setting
from odin_pl.methods.registry import register_method
from odin_pl.methods.batch import Batch, Loss, Needs, Outputs
from odin_pl.methods.odin import PAPER_EPSILONS, check_epsilon
from odin_pl.errors import UserError


def distances(h: Tensor, fit: Fit) -> Tensor:
    """d_c(h) = (h - mu_c)^T P (h - mu_c) [B, C] in float64, for features h [B, D]."""
    diff = h.double()[:, None, :] - fit["means"][None]
    return ((diff @ fit["precision"]) * diff).sum(dim=-1)


def nearest_class_loss(fit: Fit) -> Loss:
    """sum_b d_c_hat(x_b), c_hat = the nearest class at the clean input: the loss of the input preprocessing."""

    def loss(outputs: Outputs) -> Tensor:
        d = distances(outputs.features, fit)
        return d.gather(1, d.detach().argmin(dim=1, keepdim=True)).sum()

    return Loss("mahalanobis", loss)


@register_method
class Mahalanobis(Method):
    name = "mahalanobis"
    params = (Param("epsilon", "epsilon", PAPER_EPSILONS, floor=0.0),)
    needs_fit = True
    openood_grid = {"epsilon": (0.0,)}  # OpenOOD's mds: no search, no input preprocessing

    def fit(self, data: FitData, settings: Sequence[Setting]) -> dict[str, Tensor]:
        features, labels = data.features, data.labels
        n, dim = features.shape
        counts = torch.bincount(labels, minlength=int(labels.max()) + 1)
        if bool((counts == 0).any()):
            missing = (counts == 0).nonzero().flatten().tolist()
            raise UserError(f"mahalanobis: class(es) {missing} have no image among the {n} training images fitted "
                            "on; use more of them (--fit_images) so that every class has its mean")
        means = torch.zeros(len(counts), dim, dtype=torch.float64).index_add_(0, labels, features)
        means /= counts[:, None]
        centered = features - means[labels]
        scatter = centered.T @ centered / n
        rank = int(torch.linalg.matrix_rank(scatter, hermitian=True))
        if rank < dim:
            raise UserError(f"mahalanobis: the tied covariance of the training features has rank {rank}, below the "
                            f"feature dimension {dim} (from {n} training images in {len(counts)} classes); it needs "
                            "full rank: more training images than features and classes (--fit_images), and no "
                            "feature constant over the training images")
        return {"means": means, "precision": torch.linalg.pinv(scatter, hermitian=True)}

    def needs(self, settings: Sequence[Setting], fit: Fit | None = None) -> Needs:
        if not any(epsilon > 0 for (epsilon,) in settings):
            return Needs(features=True)
        if fit is None:
            raise UserError("mahalanobis: the input preprocessing (epsilon > 0) steps along the gradient of the "
                            "distance to the fitted class means: pass the method's fit")
        return Needs(features=True, losses=(nearest_class_loss(fit),))

    def score(self, batch: Batch, settings: Sequence[Setting]) -> Tensor:
        fit = batch.fit(self.name)
        out = batch.x.new_empty(len(settings), batch.x.shape[0])
        for row, (epsilon,) in enumerate(settings):
            if epsilon == 0:
                out[row] = -distances(batch.features, fit).amin(dim=1)
        rows = [row for row, (epsilon,) in enumerate(settings) if epsilon > 0]
        if rows:
            out[rows] = batch.perturbed(nearest_class_loss(fit), [settings[row][0] for row in rows],
                                        lambda h: -distances(h, fit).amin(dim=1), of="features").to(out.dtype)
        return out

    def score_range(self, num_classes: int) -> tuple[float, float]:
        return -math.inf, 0.0

    def check_setting(self, setting: Sequence[float]) -> Setting:
        setting = super().check_setting(setting)
        check_epsilon(setting[0])
        return setting
