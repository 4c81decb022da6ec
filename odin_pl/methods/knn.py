"""knn: the negative distance to the k-th nearest normalized training feature (Sun, Ming, Zhu, Li, ICML 2022).

Fit: the bank z'_i = h_i / ||h_i|| of the training features (float64; a zero-norm h is an error).
Score: z = h(x) / ||h(x)||; d_(k) = the k-th smallest of ||z - z'_i|| = sqrt(max(0, 2 - 2 z . z'_i)) over the
bank, exact (chunked matrix products, all k from one pass); score = -d_(k), in [-2, 0].
Ties between settings: k = 50 (the paper's for CIFAR-10) first, then smaller k. Grid values of k larger than the
bank are dropped (with a note); a single k larger than it (an explicit choice) is an error.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from odin_pl.methods.features import Fit
from odin_pl.methods.base import FitData, Method, Param, Setting
from odin_pl.methods.registry import register_method
from odin_pl.methods.batch import Batch, Needs
from odin_pl.errors import UserError

PAPER_K = 50.0
BANK_CHUNK = 16384  # bank rows per matrix product


def normalized(h: Tensor, what: str) -> Tensor:
    """h / ||h|| row by row in float64; a ValueError naming the rows of zero norm (``what``: whose features)."""
    h = h.double()
    norms = h.norm(dim=1, keepdim=True)
    if bool((norms == 0).any()):
        rows = (norms.flatten() == 0).nonzero().flatten().tolist()
        raise UserError(f"knn: {what} {rows[:10]} have all-zero penultimate features, whose direction (h / ||h||) "
                        "is undefined; drop knn from --methods for this model")
    return h / norms


@register_method
class KNN(Method):
    name = "knn"
    params = (Param("k", "k", (1.0, 10.0, 20.0, 50.0, 100.0, 200.0), floor=1.0),)
    needs_fit = True
    openood_grid = {"k": (50.0, 100.0, 200.0, 500.0, 1000.0)}

    def needs(self, settings: Sequence[Setting], fit: Fit | None = None) -> Needs:
        return Needs(features=True)

    def fit(self, data: FitData, settings: Sequence[Setting]) -> dict[str, Tensor]:
        return {"bank": normalized(data.features, "training images")}

    def settings_for_fit(self, settings: Sequence[Setting], fit: Fit) -> tuple[list[Setting], str | None]:
        n = len(fit["bank"])
        kept = [s for s in settings if s[0] <= n]
        dropped = [f"{s[0]:g}" for s in settings if s[0] > n]
        if dropped and len(settings) == 1:
            raise UserError(f"knn: k = {dropped[0]} is larger than the feature bank ({n} training images): give "
                            f"k <= {n} (--params knn.k=...) or fit on more images (--fit_images)")
        if not kept:
            raise UserError(f"knn: every k of the grid ({', '.join(dropped)}) is larger than the feature bank ({n} "
                            "training images): give smaller values or fit on more images (--fit_images)")
        note = (f"knn: k = {', '.join(dropped)} dropped from the grid: larger than the feature bank of {n} "
                "training images") if dropped else None
        return kept, note

    def score(self, batch: Batch, settings: Sequence[Setting]) -> Tensor:
        bank = batch.fit(self.name)["bank"]
        ks = [int(k) for (k,) in settings]
        if max(ks) > len(bank):
            raise UserError(f"knn: k = {max(ks)} is larger than the feature bank ({len(bank)} training images)")
        z = normalized(batch.features, "images of the batch")
        nearest = None  # the max(ks) smallest squared distances so far, ascending
        for chunk in bank.split(BANK_CHUNK):
            squared = (2 - 2 * z @ chunk.T).clamp_min(0)
            candidates = squared if nearest is None else torch.cat([nearest, squared], dim=1)
            nearest = candidates.topk(min(max(ks), candidates.shape[1]), dim=1, largest=False).values
        return torch.stack([-nearest[:, k - 1].sqrt() for k in ks]).to(batch.x.dtype)

    def score_range(self, num_classes: int) -> tuple[float, float]:
        return -2.0, 0.0

    def tie_key(self, setting: Setting) -> tuple:
        (k,) = setting
        return k != PAPER_K, k

    def check_setting(self, setting: Sequence[float]) -> Setting:
        setting = super().check_setting(setting)
        if not (setting[0] >= 1 and float(setting[0]).is_integer()):
            raise UserError(f"knn: k must be a whole number >= 1, got {setting[0]!r}")
        return setting
