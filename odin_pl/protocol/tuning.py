"""The paper's tuning protocol (section 4.4): seeded held-out splits and the selection rule (for any method: its
grid and tie order come from ``odin_pl.methods``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor

from odin_pl.metrics import metric_rows
from odin_pl.errors import UserError
from odin_pl.methods.base import Method


PAPER_TUNING_SIZE = 1000


@dataclass(frozen=True)
class Selection:
    """A method's chosen setting (``params``: name -> value), its tuning metrics, FPR at 95% TPR over the whole
    grid (nested by parameter: [n_T][n_eps] for ODIN; one number for a method without parameters) and the labels
    of the parameters whose choice lies on the grid's edge."""

    method: str
    setting: tuple[float, ...]
    params: dict[str, float]
    tuning_fpr: float
    tuning_auroc: float
    fpr_grid: Any = field(repr=False)
    edges: tuple[str, ...] = ()

    @property
    def edge_note(self) -> str:
        """A warning when the optimum sits on the grid's edge (the true optimum may lie outside it)."""
        return f"{' and '.join(self.edges)} on the grid edge" if self.edges else ""


def tuning_size(n: int, requested: int = PAPER_TUNING_SIZE) -> int:
    """``requested`` images for tuning, or half of a set smaller than 2 * requested."""
    if n < 2:
        raise UserError(f"a set of {n} image(s) cannot be split into tuning and test images")
    return requested if n >= 2 * requested else n // 2


def split_indices(n: int, n_tune: int, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded disjoint (tuning, test) index sets covering range(n); both sorted."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[:n_tune].sort().values, order[n_tune:].sort().values


def split_seed(seed: int, name: str) -> int:
    """A per-set seed that is stable across runs and Python processes."""
    return seed * 1_000_003 + sum((i + 1) * ord(c) for i, c in enumerate(name))


@dataclass(frozen=True)
class SetSplit:
    """The seeded tuning / test split of one data set of ``n`` images (both index sets sorted)."""

    n: int
    seed: int
    tune: Tensor
    test: Tensor

    @classmethod
    def make(cls, n: int, seed: int, n_tune: int) -> "SetSplit":
        tune, test = split_indices(n, tuning_size(n, n_tune), seed)
        return cls(n, seed, tune, test)

    @property
    def halved(self) -> bool:
        return len(self.tune) < PAPER_TUNING_SIZE

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "seed": self.seed, "n_tune": len(self.tune), "n_test": len(self.test),
                "tune_indices": self.tune.tolist()}


def select_setting(method: Method, settings: Sequence[tuple[float, ...]], in_scores: Tensor, out_scores: Tensor
                   ) -> Selection:
    """The setting minimizing FPR at 95% TPR on the tuning scores; ties: higher AUROC, then ``method.tie_key``.

    ``in_scores`` / ``out_scores``: [len(settings), n] scores of the tuning images for each setting; ``settings``
    is the method's grid in product order of its parameters. A choice at the largest value of a parameter, or at
    the smallest unless that is the parameter's natural floor (epsilon = 0), is flagged as lying on the edge.
    """
    if in_scores.shape[0] != len(settings) or out_scores.shape[0] != len(settings):
        raise UserError(f"expected scores for {len(settings)} settings, got {in_scores.shape[0]} and "
                        f"{out_scores.shape[0]}")
    s_in, s_out = in_scores.double().cpu(), out_scores.double().cpu()
    metrics = metric_rows(s_in, s_out)
    fprs, aurocs = metrics["fpr_at_95_tpr"].tolist(), metrics["auroc"].tolist()
    best = min(range(len(settings)), key=lambda i: (fprs[i], -aurocs[i], method.tie_key(settings[i])))
    chosen = tuple(settings[best])
    axes = [list(dict.fromkeys(s[j] for s in settings)) for j in range(len(method.params))]
    shape = [len(axis) for axis in axes]
    full_grid = math.prod(shape) == len(settings)
    edges = tuple(param.label for param, axis, value in zip(method.params, axes, chosen)
                  if len(axis) > 1 and (value == max(axis) or (value == min(axis) and value != param.floor)))
    return Selection(method=method.name, setting=chosen, params=method.named(chosen), tuning_fpr=fprs[best],
                     tuning_auroc=aurocs[best], fpr_grid=_nested(fprs, shape) if full_grid else fprs, edges=edges)


def _nested(values: list[float], shape: list[int]) -> Any:
    """A flat row-major list as nested lists of ``shape`` (a scalar for the empty shape)."""
    if not shape:
        return values[0]
    step = len(values) // shape[0]
    return [_nested(values[i:i + step], shape[1:]) for i in range(0, len(values), step)] if len(shape) > 1 \
        else values


def parse_floats(values: str | Sequence[float], name: str) -> tuple[float, ...]:
    """'1,2,5' or [1, 2, 5] -> (1.0, 2.0, 5.0), with an error that names the option."""
    items = values.split(",") if isinstance(values, str) else list(values)
    try:
        return tuple(float(v) for v in items if str(v).strip())
    except ValueError as err:
        raise UserError(f"{name} takes comma-separated numbers, got {values!r}") from err
