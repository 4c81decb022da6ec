"""openmax: the probability of an unknown class after Weibull recalibration of the top logits (Bendale, Boult, CVPR
2016).

Fit, in float64, per class c from the training logits f_i that are correctly classified (prediction = label = c;
a class with none, or with fewer than the tail size, is refused):
    mu_c = their mean; d_i = dist(f_i, mu_c); tail = the ``tailsize`` largest d_i; t~ = tail + 10000 - min(tail)
    (libMR's translation); a Weibull with location 0 by exact maximum likelihood on t~ (a tail of equal distances
    is refused): the shape kappa solves sum t^kappa log t / sum t^kappa - 1/kappa = mean log t (bisection in
    log kappa), the scale lambda = (mean t^kappa)^(1/kappa);  W_c(d) = 1 - exp(-((d + 10000 - min tail) /
    lambda)^kappa)  (0 where d + 10000 - min tail <= 0).
dist: EUCLIDEAN ||f - mu||_2, or EUCOS ||f - mu||_2 / 200 + (1 - cos(f, mu)).
Score at (tailsize, alpha, dist): the ranks r_1 .. r_alpha of the alpha largest logits (stable descending sort)
get omega = (alpha + 1 - i) / alpha (0 elsewhere); w_c = W_c(dist(f, mu_c)); v_c = f_c (1 - omega_c w_c),
v_0 = sum_c f_c omega_c w_c; score = -softmax([v_0, v])_0 (max-subtracted, no clipping), in [-1, 0].
Grid tailsize {10, 20, 30, 40, 50} x alpha {1, 3, 5, 10} x dist {EUCLIDEAN, EUCOS}; alpha > N cannot apply
(dropped from a grid); ties: tailsize 20, alpha 10, euclidean first, then smaller values.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from odin_pl.methods.posthoc import check_whole, drop_inapplicable
from odin_pl.methods.base import FitData, Method, Param, Setting
from odin_pl.methods.batch import Batch
from odin_pl.methods.features import Fit
from odin_pl.methods.registry import register_method
from odin_pl.errors import UserError

EUCLIDEAN, EUCOS = 0.0, 1.0  # the distance in a setting
TAILSIZE_GRID = (10.0, 20.0, 30.0, 40.0, 50.0)
ALPHA_GRID = (1.0, 3.0, 5.0, 10.0)
DISTANCE_GRID = (EUCLIDEAN, EUCOS)
PAPER_TAILSIZE, PAPER_ALPHA = 20.0, 10.0
TRANSLATION = 10000.0  # libMR's shift of the tail
EUCOS_SCALE = 200.0
OPENMAX_RANGE = (-1.0, 0.0)


def tie_key(setting: Sequence[float]) -> tuple:
    """tailsize 20, alpha 10, euclidean first; then smaller values."""
    tailsize, alpha, distance = setting
    return tailsize != PAPER_TAILSIZE, tailsize, alpha != PAPER_ALPHA, alpha, distance


def distances(logits: Tensor, means: Tensor, distance: float) -> Tensor:
    """dist(f_b, mu_c) [B, N] in float64."""
    if distance not in DISTANCE_GRID:
        raise UserError(f"openmax: the distance must be {EUCLIDEAN:g} (euclidean) or {EUCOS:g} (eucos), got "
                        f"{distance!r}")
    logits = logits.double()
    euclid = torch.cdist(logits, means)
    if distance == EUCLIDEAN:
        return euclid
    cosine = (logits @ means.T) / (logits.norm(dim=1)[:, None] * means.norm(dim=1)[None])
    return euclid / EUCOS_SCALE + (1 - cosine)


def weibull_fit(t: Tensor) -> tuple[Tensor, Tensor]:
    """(kappa [R], lambda [R]): the maximum-likelihood Weibull (location 0) of each row of t [R, k] > 0, float64."""
    s = t.double().log()
    top = s.amax(dim=1, keepdim=True)
    mean = s.mean(dim=1)

    def slope(log_kappa: Tensor) -> Tensor:  # increasing in kappa; its root is the MLE
        kappa = log_kappa.exp()[:, None]
        w = torch.exp(kappa * (s - top))
        return (w * s).sum(dim=1) / w.sum(dim=1) - 1 / kappa[:, 0] - mean

    lo = torch.full_like(mean, -50.0)
    hi = torch.full_like(mean, 80.0)
    for _ in range(200):
        mid = (lo + hi) / 2
        below = slope(mid) < 0
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    kappa = ((lo + hi) / 2).exp()
    scale = torch.exp(top[:, 0] + torch.exp(kappa[:, None] * (s - top)).mean(dim=1).log() / kappa)
    return kappa, scale


def fit_openmax(logits: Tensor, labels: Tensor, pairs: Sequence[tuple[float, float]]) -> dict:
    """{means [N, N], counts [N], pairs [m, 2] (tailsize, dist), kappa, scale, shift [m, N]} for the
    (tailsize, dist) pairs of the grid."""
    logits = logits.double()
    num_classes = logits.shape[1]
    correct = logits.argmax(dim=1) == labels
    kept, classes = logits[correct], labels[correct]
    counts = torch.bincount(classes, minlength=num_classes)
    if bool((counts == 0).any()):
        missing = (counts == 0).nonzero().flatten().tolist()
        raise UserError(f"openmax: class(es) {missing[:10]} have no correctly classified training image, so they "
                        "have no mean logit; fit on more images (--fit_images)")
    means = torch.zeros(num_classes, num_classes, dtype=torch.float64).index_add_(0, classes, kept) / counts[:, None]
    kappas, scales, shifts = [], [], []
    for tailsize, distance in pairs:
        size = check_whole(tailsize, "openmax", "the tail size")
        if size > int(counts.min()):
            raise UserError(f"openmax: tail size {size} is larger than the {int(counts.min())} correctly classified "
                            f"training images of class {int(counts.argmin())}; give a smaller tail size")
        d = distances(kept, means, distance).gather(1, classes[:, None])[:, 0]
        tails = torch.stack([d[classes == c].sort().values[-size:] for c in range(num_classes)])
        equal = (tails[:, 0] == tails[:, -1]).nonzero().flatten().tolist()
        if equal:
            raise UserError(f"openmax: the {size} largest distances of class(es) {equal[:10]} to their mean logit "
                            "are all equal, so no Weibull fits them; give another tail size")
        shift = TRANSLATION - tails[:, 0]
        kappa, scale = weibull_fit(tails + shift[:, None])
        kappas.append(kappa)
        scales.append(scale)
        shifts.append(shift)
    return {"means": means, "counts": counts, "pairs": torch.tensor(list(pairs), dtype=torch.float64),
            "kappa": torch.stack(kappas), "scale": torch.stack(scales), "shift": torch.stack(shifts)}


def weibull_cdf(d: Tensor, kappa: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """W_c(d) [B, N] = 1 - exp(-((d + shift_c) / lambda_c)^kappa_c), 0 where d + shift_c <= 0."""
    x = d + shift
    z = torch.exp(kappa * (x.clamp_min(torch.finfo(torch.float64).tiny).log() - scale.log()))
    return torch.where(x > 0, -torch.expm1(-z), 0.0)


def openmax_score(logits: Tensor, fit: dict, tailsize: float, alpha: float, distance: float) -> Tensor:
    """-softmax([v_0, v])_0 [B] in float64."""
    logits = logits.double()
    num_classes = logits.shape[1]
    alpha = check_whole(alpha, "openmax", "alpha")
    if alpha > num_classes:
        raise UserError(f"openmax: alpha = {alpha} is larger than the {num_classes} classes; give alpha <= "
                        f"{num_classes} (--params openmax.alpha=...)")
    matches = ((fit["pairs"][:, 0] == tailsize) & (fit["pairs"][:, 1] == distance)).nonzero().flatten()
    if len(matches) == 0:
        raise UserError(f"openmax: the fit has no Weibull models for tail size {tailsize:g} and distance "
                        f"{distance:g}; fit again with them in the grid")
    row = int(matches[0])
    w = weibull_cdf(distances(logits, fit["means"], distance), fit["kappa"][row], fit["scale"][row],
                    fit["shift"][row])
    order = torch.sort(logits, dim=1, descending=True, stable=True).indices[:, :alpha]
    ranks = torch.arange(alpha, 0, -1, dtype=torch.float64) / alpha
    omega = torch.zeros_like(logits).scatter_(1, order, ranks.expand(len(logits), alpha).contiguous())
    recalibrated = torch.cat([(logits * omega * w).sum(dim=1, keepdim=True), logits * (1 - omega * w)], dim=1)
    return -torch.softmax(recalibrated, dim=1)[:, 0]


@register_method
class OpenMax(Method):
    name = "openmax"
    params = (Param("tailsize", "tail size", TAILSIZE_GRID, floor=1.0), Param("alpha", "alpha", ALPHA_GRID, floor=1.0),
              Param("distance", "distance (0: euclidean, 1: eucos)", DISTANCE_GRID))
    #: OpenOOD sets no openmax sweep: the grid's tie default (tail size 20, alpha 10, euclidean)
    openood_grid = {"tailsize": (20.0,), "alpha": (10.0,), "distance": (EUCLIDEAN,)}
    needs_fit = True

    def fit(self, data: FitData, settings: Sequence[Setting]) -> dict[str, Tensor]:
        """Weibull models for the (tail size, distance) pairs of the grid whose tail fits every class (the smallest
        class's correctly classified training logits); the others are dropped by settings_for_fit."""
        logits, labels = data.logits, data.labels
        correct = labels[data.predictions == labels]
        smallest = int(torch.bincount(correct, minlength=logits.shape[1]).min())
        pairs = list(dict.fromkeys((t, d) for t, _, d in settings))
        fitting = [(t, d) for t, d in pairs if t <= smallest] if len(pairs) > 1 and smallest > 0 else pairs
        if not fitting:
            raise UserError(f"openmax: every tail size of the grid is larger than the {smallest} correctly "
                            "classified training images of the smallest class; give smaller tail sizes")
        return fit_openmax(logits, labels, fitting)

    def settings_for_fit(self, settings: Sequence[Setting], fit: Fit) -> tuple[list[Setting], str | None]:
        pairs = {tuple(pair) for pair in fit["pairs"].tolist()}
        smallest, num_classes = int(fit["counts"].min()), fit["means"].shape[0]

        def check(setting: Setting) -> None:
            tailsize, alpha, distance = setting
            if (tailsize, distance) not in pairs:
                raise UserError(f"openmax: tail size {tailsize:g} is larger than the {smallest} correctly classified "
                                "training images of the smallest class")
            if alpha > num_classes:
                raise UserError(f"openmax: alpha = {alpha:g} is larger than the {num_classes} classes")

        return drop_inapplicable(self.name, settings, check)

    def score(self, batch: Batch, settings: Sequence[Setting]) -> Tensor:
        logits, fit = batch.logits, batch.fit(self.name)
        return torch.stack([openmax_score(logits, fit, *setting) for setting in settings]).to(logits.dtype)

    def score_range(self, num_classes: int) -> tuple[float, float]:
        return OPENMAX_RANGE

    def tie_key(self, setting: Setting) -> tuple:
        return tie_key(setting)

    def check_setting(self, setting: Sequence[float]) -> Setting:
        setting = super().check_setting(setting)
        check_whole(setting[0], self.name, "the tail size")
        check_whole(setting[1], self.name, "alpha")
        if setting[2] not in DISTANCE_GRID:
            raise UserError(f"openmax: the distance must be {EUCLIDEAN:g} (euclidean) or {EUCOS:g} (eucos), got "
                            f"{setting[2]!r}")
        return setting
