"""gen: the generalized entropy of the largest softmax probabilities (Liu, Lochman, Zach, CVPR 2023).

p = softmax(f); S = the M' = min(M, N) largest p (stable descending sort); score = -sum_{j in S} p_j^gamma
(1 - p_j)^gamma (a sum, no clamping), in [-M' 4^-gamma, 0]. Grid gamma {0.01, 0.1, 0.5, 1, 2, 5, 10} x M {10, 50,
100, 200, 500, 1000}; values M > N all give M' = N (keep one of them: ``distinct_settings``). Ties: gamma = 0.1
then smaller gamma, M = 100 then smaller M.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from odin_pl.methods.base import Method, Param, Setting
from odin_pl.methods.batch import Batch
from odin_pl.methods.registry import register_method
from odin_pl.methods.posthoc import as_rows, check_positive, check_whole

GAMMA_GRID = (0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0)
M_GRID = (10.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
PAPER_GAMMA, PAPER_M = 0.1, 100.0


def tie_key(setting: Sequence[float]) -> tuple:
    """gamma = 0.1 then smaller gamma; M = 100 then smaller M."""
    gamma, m = setting
    return gamma != PAPER_GAMMA, gamma, m != PAPER_M, m


def distinct_settings(settings: Sequence[tuple[float, float]], num_classes: int) -> list[tuple[float, float]]:
    """The settings without those that repeat another's (gamma, min(M, N)): of the values M >= N only the first
    in the tie order stays."""
    kept: dict[tuple[float, int], tuple[float, float]] = {}
    for setting in sorted(settings, key=tie_key):
        kept.setdefault((setting[0], min(int(setting[1]), num_classes)), setting)
    chosen = set(kept.values())
    return [s for s in settings if s in chosen]


def score_range(num_classes: int, gamma: float, m: float) -> tuple[float, float]:
    """[-M' 4^-gamma, 0]."""
    return -min(int(m), num_classes) * 4.0 ** -gamma, 0.0


def gen_score(logits: Tensor, gamma: float, m: float) -> Tensor:
    """-sum over the min(M, N) largest p of p^gamma (1 - p)^gamma [B], in float64."""
    gamma = check_positive(gamma, "gen", "gamma")
    m = check_whole(m, "gen", "M")
    p = torch.softmax(logits.double(), dim=1)
    top = torch.sort(p, dim=1, descending=True, stable=True).values[:, :m]
    return -(top.pow(gamma) * (1 - top).pow(gamma)).sum(dim=1)


@register_method
class GEN(Method):
    name = "gen"
    params = (Param("gamma", "gamma", GAMMA_GRID), Param("M", "M", M_GRID, floor=1.0))
    openood_grid = {"gamma": GAMMA_GRID, "M": M_GRID}  # OpenOOD's gen sweep, gamma varying fastest

    def score(self, batch: Batch, settings: Sequence[Setting]) -> Tensor:
        """One score per distinct (gamma, min(M, N)): values M >= N share theirs."""
        logits = batch.logits
        n = logits.shape[1]
        rows: dict[tuple[float, int], Tensor] = {}
        for gamma, m in settings:
            key = (gamma, min(int(m), n))
            if key not in rows:
                rows[key] = gen_score(logits, gamma, key[1])
        return as_rows([rows[(gamma, min(int(m), n))] for gamma, m in settings], logits)

    def score_range(self, num_classes: int) -> tuple[float, float]:
        """[-N, 0]: every setting's [-min(M, N) 4^-gamma, 0] lies in it (gamma > 0)."""
        return -float(num_classes), 0.0

    def tie_key(self, setting: Setting) -> tuple:
        return tie_key(setting)

    def check_setting(self, setting: Sequence[float]) -> Setting:
        setting = super().check_setting(setting)
        check_positive(setting[0], self.name, "gamma")
        check_whole(setting[1], self.name, "M")
        return setting
