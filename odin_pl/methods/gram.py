"""gram: deviations of the layers' Gram matrices from their class-wise training bounds (Sastry, Oore, ICML 2020).

Layers: the outputs F [B, C, ...] of every nn.Conv2d module plus forward_features' output, in call order, in float64.
Gram features of pole p (1 <= p <= P), one per channel:
    G_p(F) = row sums of (F^p)(F^p)^T over the C x HW map (F^p elementwise), then sign(.) |.|^(1/p)
Deviation of a Gram feature G from the bounds [lo, hi] of a class:
    delta = relu(lo - G) / |lo + 1e-6| + relu(G - hi) / |hi + 1e-6|;  delta_l = sum_{p <= P} sum_entries delta
Fit in two passes, classes = the predictions (a class never predicted is refused):
    split:  hold out a seeded int(0.1 n_c) of the images predicted c, per class (``held_out_mask``)
    pass 1: per (class, layer, pole) the min and max of G over the rest (``update_bounds``)
    pass 2: n_l = mean over the held-out images of delta_l / MSP (1 where the mean is 0 or none is held out)
Score: -sum_l delta_l(x) / n_l / MSP(x) with the bounds of yhat(x) = argmax f (the first index on ties); range
(-inf, 0]. P grid {10, 5} (ties: 10); the poles' sums are shared between the values of P.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from odin_pl.methods.posthoc import check_whole
from odin_pl.methods.base import FitData, Method, Param, Setting
from odin_pl.methods.batch import Batch, Layers, Needs
from odin_pl.methods.features import Fit
from odin_pl.methods.registry import register_method
from odin_pl.errors import UserError

POLES_GRID = (10.0, 5.0)
PAPER_POLES = 10.0
HOLD_OUT = 0.1
OFFSET = 1e-6
GRAM_RANGE = (-math.inf, 0.0)


def tie_key(setting: Sequence[float]) -> tuple:
    """P = 10 first, then smaller P."""
    (poles,) = setting
    return poles != PAPER_POLES, poles


def gram_features(layer: Tensor, poles: int) -> Tensor:
    """G_p [poles, B, C] for p = 1 .. poles of a layer output [B, C, ...], in float64. The row sums of the Gram
    matrix A Aᵀ (A = F^p, C x HW) are A (Aᵀ 1), one matrix-vector product per image: O(C HW) instead of
    O(C² HW); F^p is built in place by repeated products."""
    flat = layer.double().reshape(layer.shape[0], layer.shape[1], -1)
    power, sums = flat.clone(), []
    for p in range(1, poles + 1):
        if p > 1:
            power.mul_(flat)
        sums.append(torch.bmm(power, power.sum(dim=1).unsqueeze(2)).squeeze(2))
    stacked = torch.stack(sums)
    roots = 1.0 / torch.arange(1, poles + 1, dtype=torch.float64)[:, None, None]
    return stacked.sign() * stacked.abs().pow(roots)


def held_out_mask(predictions: Tensor, num_classes: int, seed: int) -> Tensor:
    """A boolean mask [n]: int(0.1 n_c) of the images predicted c held out per class, chosen by torch.randperm
    (one generator seeded with ``seed``, classes in order); a UserError naming the classes never predicted."""
    counts = torch.bincount(predictions, minlength=num_classes)
    if bool((counts == 0).any()):
        missing = (counts == 0).nonzero().flatten().tolist()
        raise UserError(f"gram: class(es) {missing[:10]} are never predicted on the {len(predictions)} training "
                        "images, so they have no Gram bounds; fit on more images (--fit_images)")
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(len(predictions), dtype=torch.bool)
    for c in range(num_classes):
        members = (predictions == c).nonzero().flatten()
        chosen = torch.randperm(len(members), generator=generator)[:int(HOLD_OUT * len(members))]
        mask[members[chosen]] = True
    return mask


def update_bounds(bounds: dict | None, grams: Sequence[Tensor], classes: Tensor, num_classes: int) -> dict:
    """The bounds {min.l, max.l [P, N, C_l] per layer l, count [N]} updated with the Gram features [P, B, C_l]
    of a batch of images predicted ``classes`` [B] (pass 1; ``bounds`` None starts them)."""
    if bounds is None:
        bounds = {"count": torch.zeros(num_classes, dtype=torch.long)}
        for layer, g in enumerate(grams):
            shape = (g.shape[0], num_classes, g.shape[2])
            bounds[f"min.{layer}"] = torch.full(shape, math.inf, dtype=torch.float64)
            bounds[f"max.{layer}"] = torch.full(shape, -math.inf, dtype=torch.float64)
    index = classes[None, :, None]
    for layer, g in enumerate(grams):
        index_l = index.expand_as(g)
        bounds[f"min.{layer}"].scatter_reduce_(1, index_l, g, reduce="amin")
        bounds[f"max.{layer}"].scatter_reduce_(1, index_l, g, reduce="amax")
    bounds["count"] += torch.bincount(classes, minlength=num_classes)
    return bounds


def check_bounds(bounds: dict) -> None:
    """A UserError naming the classes that no image of pass 1 was predicted as."""
    missing = (bounds["count"] == 0).nonzero().flatten().tolist()
    if missing:
        raise UserError(f"gram: class(es) {missing[:10]} have no training image outside the held-out part, so they "
                        "have no Gram bounds; fit on more images (--fit_images)")


def deviations(grams: Sequence[Tensor], bounds: dict, classes: Tensor) -> Tensor:
    """delta per layer and pole, summed over the entries, [L, P, B], against the bounds of ``classes`` [B]."""
    out = []
    for layer, g in enumerate(grams):
        lo = bounds[f"min.{layer}"][: g.shape[0], classes]
        hi = bounds[f"max.{layer}"][: g.shape[0], classes]
        delta = torch.relu(lo - g) / (lo + OFFSET).abs() + torch.relu(g - hi) / (hi + OFFSET).abs()
        out.append(delta.sum(dim=2))
    return torch.stack(out)


def max_softmax(logits: Tensor) -> Tensor:
    """MSP [B] in float64."""
    return torch.softmax(logits.double(), dim=1).amax(dim=1)


def update_norms(sums: Tensor, grams: Sequence[Tensor], bounds: dict, logits: Tensor, poles: Sequence[int]) -> Tensor:
    """Pass 2: the sums [len(poles), L] of delta_l / MSP over the held-out images (start: zeros), plus a batch of
    them (their Gram features and logits)."""
    dev = deviations(grams, bounds, logits.argmax(dim=1)) / max_softmax(logits)
    return sums + torch.stack([dev[:, :p].sum(dim=(1, 2)) for p in poles])


def finish_fit(bounds: dict, poles: Sequence[int], sums: Tensor, count: int) -> dict:
    """The fit: the bounds (checked), poles [m] and n_l [m, L] = sums / count, 1 where that is 0 (or count is 0)."""
    check_bounds(bounds)
    means = sums.double() / max(count, 1)
    return {**bounds, "poles": torch.tensor(list(poles), dtype=torch.float64),
            "norms": torch.where(means == 0, 1.0, means)}


def gram_score(logits: Tensor, grams: Sequence[Tensor], fit: dict, poles: float) -> Tensor:
    """-sum_l delta_l / n_l / MSP [B] in float64, with P = ``poles`` (``grams`` hold at least P poles)."""
    p = check_whole(poles, "gram", "the number of poles P")
    matches = (fit["poles"] == p).nonzero().flatten()
    if len(matches) == 0:
        raise UserError(f"gram: the fit has P in {fit['poles'].long().tolist()}, not P = {p}; fit again with P in "
                        "the grid")
    if grams[0].shape[0] < p:
        raise UserError(f"gram: the Gram features hold {grams[0].shape[0]} poles, fewer than P = {p}; compute "
                        "them with the grid's largest P")
    dev = deviations(grams, fit, logits.argmax(dim=1))[:, :p].sum(dim=1)
    return -(dev / fit["norms"][int(matches[0])][:, None]).sum(dim=0) / max_softmax(logits)


#: Gram's layers: every nn.Conv2d output and forward_features' output, in call order.
GRAM_LAYERS = Layers((nn.Conv2d,), forward_features=True)


def batch_grams(batch: Batch, poles: int) -> list[Tensor]:
    """G_p [poles, B, C_l] of each of the batch's Gram layers."""
    return [gram_features(layer, poles) for layer in batch.layers(GRAM_LAYERS)]


@register_method
class Gram(Method):
    name = "gram"
    params = (Param("poles", "P", POLES_GRID, floor=1.0),)
    openood_grid = {"poles": (10.0,)}  # OpenOOD's gram sets no sweep: the paper's P 10
    needs_fit = True

    def needs(self, settings: Sequence[Setting], fit: Fit | None = None) -> Needs:
        return Needs(logits=True, layers=(GRAM_LAYERS,))

    def fit(self, data: FitData, settings: Sequence[Setting]) -> dict[str, Tensor]:
        """The class bounds from the images not held out (pass 1), the norms from the held-out ones (pass 2)."""
        poles = sorted({check_whole(p, self.name, "the number of poles P") for (p,) in settings})
        num_classes = data.logits.shape[1]
        held = held_out_mask(data.predictions, num_classes, data.seed)
        needs = self.needs(settings)
        bounds = None
        for batch, _ in data.batches(needs, (~held).nonzero().flatten().tolist()):
            bounds = update_bounds(bounds, batch_grams(batch, max(poles)), batch.logits.argmax(dim=1), num_classes)
        if bounds is None:
            raise UserError("gram: every training image is held out, so no class has Gram bounds; fit on more images")
        check_bounds(bounds)
        sums = torch.zeros(len(poles), (len(bounds) - 1) // 2, dtype=torch.float64)  # min.l, max.l per layer
        for batch, _ in data.batches(needs, held.nonzero().flatten().tolist()):
            sums = update_norms(sums, batch_grams(batch, max(poles)), bounds, batch.logits, poles)
        return {**finish_fit(bounds, poles, sums, int(held.sum())), "seed": torch.tensor(data.seed)}

    def score(self, batch: Batch, settings: Sequence[Setting]) -> Tensor:
        logits, fit = batch.logits, batch.fit(self.name)
        grams = batch_grams(batch, int(max(p for (p,) in settings)))
        return torch.stack([gram_score(logits, grams, fit, p) for (p,) in settings]).to(logits.dtype)

    def score_range(self, num_classes: int) -> tuple[float, float]:
        return GRAM_RANGE

    def tie_key(self, setting: Setting) -> tuple:
        return tie_key(setting)

    def check_setting(self, setting: Sequence[float]) -> Setting:
        setting = super().check_setting(setting)
        check_whole(setting[0], self.name, "the number of poles P")
        return setting
