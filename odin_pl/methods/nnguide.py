"""nnguide: the energy guided by the similarity to an energy-scaled bank of training features (Park, Jung, Teoh,
ICCV 2023).

Bank: a seeded subset of the training split (FIT_FRACTION = 1%: ``bank_indices``), entries E(z) h_hat(z) with
h_hat = h / ||h|| (a zero norm is an error) and E = logsumexp(f), in float64.
Score: E(x) * mean of the k largest <h_hat(x), bank_j> over the bank (exact, chunked); any finite value.
k grid {10, 100}; ties: k = 10 first, then smaller k. k larger than the bank is dropped from a grid (an error
when given explicitly).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from odin_pl.methods.posthoc import check_whole, directions, drop_inapplicable
from odin_pl.methods.base import FitData, Method, Param, Setting
from odin_pl.methods.batch import Batch, Needs
from odin_pl.methods.features import Fit
from odin_pl.methods.registry import register_method
from odin_pl.errors import UserError

FIT_FRACTION = 0.01
K_GRID = (10.0, 100.0)
PAPER_K = 10.0
BANK_CHUNK = 16384  # bank rows per matrix product
NNGUIDE_RANGE = (-math.inf, math.inf)


def tie_key(setting: Sequence[float]) -> tuple:
    """k = 10 first, then smaller k."""
    (k,) = setting
    return k != PAPER_K, k


def bank_indices(n: int, seed: int, fraction: float = FIT_FRACTION) -> Tensor:
    """The sorted indices of the bank: max(1, round(fraction n)) of range(n), drawn by torch.randperm from a
    generator seeded with ``seed``."""
    if not 0 < fraction <= 1:
        raise UserError(f"nnguide: the bank fraction must lie in (0, 1], got {fraction!r}")
    size = max(1, round(fraction * n))
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)[:size].sort().values


def fit_nnguide(h: Tensor, logits: Tensor) -> dict:
    """{bank [m, D]: E(z) h_hat(z)} from the bank images' features and logits."""
    return {"bank": directions(h, "nnguide", "bank images") * torch.logsumexp(logits.double(), dim=1)[:, None]}


def nnguide_score(logits: Tensor, h: Tensor, fit: dict, ks: Sequence[float]) -> Tensor:
    """E(x) * mean of the k largest similarities to the bank, [len(ks), B] in float64 (all k from one pass)."""
    bank = fit["bank"]
    ks = [check_whole(k, "nnguide", "k") for k in ks]
    if max(ks) > len(bank):
        raise UserError(f"nnguide: k = {max(ks)} is larger than the bank ({len(bank)} training images): give a "
                        "smaller k (--params nnguide.k=...) or fit on more images")
    z = directions(h, "nnguide", "images of the batch")
    top = None  # the max(ks) largest similarities so far, descending
    for chunk in bank.split(BANK_CHUNK):
        similarities = z @ chunk.T
        candidates = similarities if top is None else torch.cat([top, similarities], dim=1)
        top = candidates.topk(min(max(ks), candidates.shape[1]), dim=1).values
    energy = torch.logsumexp(logits.double(), dim=1)
    return torch.stack([energy * top[:, :k].mean(dim=1) for k in ks])


@register_method
class NNGuide(Method):
    name = "nnguide"
    params = (Param("k", "k", K_GRID, floor=1.0),)
    openood_grid = {"k": (100.0,)}  # OpenOOD's nnguide: no search, K 100 (on a 1% bank, as here)
    needs_fit = True

    def needs(self, settings: Sequence[Setting], fit: Fit | None = None) -> Needs:
        return Needs(features=True)

    def fit(self, data: FitData, settings: Sequence[Setting]) -> dict[str, Tensor]:
        """The bank of the seeded 1% of the fit images (the run seed), with that seed."""
        rows = bank_indices(len(data.features), data.seed)
        return {**fit_nnguide(data.features[rows], data.logits[rows]), "seed": torch.tensor(data.seed)}

    def settings_for_fit(self, settings: Sequence[Setting], fit: Fit) -> tuple[list[Setting], str | None]:
        size = len(fit["bank"])

        def check(setting: Setting) -> None:
            if setting[0] > size:
                raise UserError(f"nnguide: k = {setting[0]:g} is larger than the bank ({size} training images, "
                                f"{FIT_FRACTION:.0%} of those fitted on); give k <= {size} or fit on more images")

        return drop_inapplicable(self.name, settings, check)

    def score(self, batch: Batch, settings: Sequence[Setting]) -> Tensor:
        h = batch.features
        return nnguide_score(batch.logits, h, batch.fit(self.name), [k for (k,) in settings]).to(h.dtype)

    def score_range(self, num_classes: int) -> tuple[float, float]:
        return NNGUIDE_RANGE

    def tie_key(self, setting: Setting) -> tuple:
        return tie_key(setting)

    def check_setting(self, setting: Sequence[float]) -> Setting:
        setting = super().check_setting(setting)
        check_whole(setting[0], self.name, "k")
        return setting
