"""ash_p, ash_b, ash_s: activation shaping of the pooled penultimate features (Djurisic, Bozanic, Ashok, Liu, ICLR
2023), the classifier g(h) = h W^T + b applied again to the shaped features.

At percentile p (a percent): k = D - round(D p / 100) entries kept (numpy's round half to even), K = the top-k
indices of h (stable descending sort: the lower index on ties), s1 = sum h, s2 = sum_K h.
    ash_p: h_hat = h on K, 0 elsewhere
    ash_b: h_hat = s1 / k on K, 0 elsewhere
    ash_s: h_hat = ash_p(h) exp(s1 / s2)        (exp(0) where s2 = 0, i.e. h = 0)
score = logsumexp(g(h_hat)), any finite value (h = 0 gives logsumexp(b)). The features must be >= 0: checked on the
training features at fit (refused otherwise). p grid {65, 70, 75, 80, 85, 90, 95}; ties: 90, then larger p.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from odin_pl.methods.posthoc import kept_count, top_k_mask
from odin_pl.methods.base import FitData, Method, Param, Setting
from odin_pl.methods.batch import Batch, Needs
from odin_pl.methods.features import Fit
from odin_pl.methods.registry import register_method
from odin_pl.methods.posthoc import as_rows, drop_inapplicable
from odin_pl.errors import UserError

VARIANTS = ("ash_p", "ash_b", "ash_s")
P_GRID = (65.0, 70.0, 75.0, 80.0, 85.0, 90.0, 95.0)
PAPER_P = 90.0
ASH_RANGE = (-math.inf, math.inf)


def tie_key(setting: Sequence[float]) -> tuple:
    """p = 90 first, then larger p."""
    (p,) = setting
    return p != PAPER_P, -p


def fit_nonnegative(h: Tensor, method: str) -> dict:
    """{feature_min: the smallest training feature}; a UserError when it is negative (ASH and SCALE assume
    post-ReLU features)."""
    smallest = h.double().min()
    if float(smallest) < 0:
        raise UserError(f"{method}: the penultimate features must be >= 0 (post-ReLU), but a training feature is "
                        f"{float(smallest):.4g}; drop {method} from --methods for this model")
    return {"feature_min": smallest}


def top_sums(h: Tensor, percentile: float, method: str) -> tuple[Tensor, Tensor, int]:
    """(the mask of K [B, D], s1 [B], s2 [B]) with k the kept count at p; h in float64."""
    k = kept_count(h.shape[1], percentile, method)
    mask = top_k_mask(h, k)
    return mask, h.sum(dim=1), (h * mask).sum(dim=1)


def exp_share(s1: Tensor, s2: Tensor) -> Tensor:
    """exp(s1 / s2) [B], 1 where s2 = 0 (then h = 0, since h >= 0 and K holds its largest entries)."""
    return torch.exp(torch.where(s2 > 0, s1 / s2.where(s2 > 0, 1.0), 0.0))


def shaped(h: Tensor, variant: str, percentile: float) -> Tensor:
    """h_hat [B, D] of an ASH variant at percentile p, in float64."""
    if variant not in VARIANTS:
        raise UserError(f"ash: unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    h = h.double()
    mask, s1, s2 = top_sums(h, percentile, variant)
    pruned = h * mask
    if variant == "ash_p":
        return pruned
    if variant == "ash_b":
        return mask * (s1 / mask.sum(dim=1))[:, None]
    return pruned * exp_share(s1, s2)[:, None]


def ash_score(h: Tensor, weight: Tensor, bias: Tensor, variant: str, percentile: float) -> Tensor:
    """logsumexp(g(h_hat)) [B] in float64."""
    logits = torch.nn.functional.linear(shaped(h, variant, percentile), weight.double(), bias.double())
    return torch.logsumexp(logits, dim=1)


class _Shaping(Method):
    """What the ASH variants and SCALE share: the p grid, the sign check of the training features (the fit) and
    the p that keep no entry of h dropped."""

    params = (Param("percentile", "p", P_GRID),)
    openood_grid = {"percentile": P_GRID}  # OpenOOD's ash and scale sweeps
    needs_fit = True

    def needs(self, settings: Sequence[Setting], fit: Fit | None = None) -> Needs:
        return Needs(features=True)

    def fit(self, data: FitData, settings: Sequence[Setting]) -> dict[str, Tensor]:
        return {**fit_nonnegative(data.features, self.name),
                "dim": torch.tensor(data.features.shape[1], dtype=torch.float64)}

    def settings_for_fit(self, settings: Sequence[Setting], fit: Fit) -> tuple[list[Setting], str | None]:
        dim = int(fit["dim"])
        return drop_inapplicable(self.name, settings, lambda s: kept_count(dim, s[0], self.name))

    def tie_key(self, setting: Setting) -> tuple:
        return tie_key(setting)

    def check_setting(self, setting: Sequence[float]) -> Setting:
        setting = super().check_setting(setting)
        if not 0 <= setting[0] < 100:
            raise UserError(f"{self.name}: the percentile p must lie in [0, 100) (a percent, e.g. 90), got "
                            f"{setting[0]!r}")
        return setting


class _ASH(_Shaping):
    def score(self, batch: Batch, settings: Sequence[Setting]) -> Tensor:
        h, classifier = batch.features, batch.classifier
        return as_rows([ash_score(h, classifier.weight, classifier.bias, self.name, p) for (p,) in settings], h)

    def score_range(self, num_classes: int) -> tuple[float, float]:
        return ASH_RANGE


@register_method
class ASHP(_ASH):
    name = "ash_p"


@register_method
class ASHB(_ASH):
    name = "ash_b"


@register_method
class ASHS(_ASH):
    name = "ash_s"
