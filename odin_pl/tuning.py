"""The paper's tuning protocol (section 4.4): held-out splits, the (T, epsilon) grid and the selection rule."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product
from typing import Sequence

import torch
from torch import Tensor

from odin_pl.metrics import auroc_rows, fpr_at_tpr_rows

PAPER_TEMPERATURES = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
PAPER_EPSILONS = tuple(0.004 * i / 20 for i in range(21))  # 21 evenly spaced values, 0 .. 0.004
PAPER_TUNING_SIZE = 1000


@dataclass(frozen=True)
class Grid:
    """A (T, epsilon) grid; ``settings`` lists every pair, T-major."""

    temperatures: tuple[float, ...] = PAPER_TEMPERATURES
    epsilons: tuple[float, ...] = PAPER_EPSILONS

    def __post_init__(self) -> None:
        if not self.temperatures or not self.epsilons:
            raise ValueError("the tuning grid needs at least one temperature and one epsilon")
        object.__setattr__(self, "temperatures", tuple(float(t) for t in self.temperatures))
        object.__setattr__(self, "epsilons", tuple(float(e) for e in self.epsilons))

    @property
    def settings(self) -> list[tuple[float, float]]:
        return list(product(self.temperatures, self.epsilons))


@dataclass(frozen=True)
class Selection:
    """The chosen (T, epsilon), its tuning metrics, and FPR at 95% TPR over the whole grid [n_T, n_eps]."""

    temperature: float
    epsilon: float
    tuning_fpr: float
    tuning_auroc: float
    fpr_grid: list[list[float]] = field(repr=False)
    temperature_on_edge: bool = False
    epsilon_on_edge: bool = False

    @property
    def edge_note(self) -> str:
        """A warning when the optimum sits on the grid's edge (the true optimum may lie outside it)."""
        edges = [name for name, on in (("T", self.temperature_on_edge), ("epsilon", self.epsilon_on_edge)) if on]
        return f"{' and '.join(edges)} on the grid edge" if edges else ""


def tuning_size(n: int, requested: int = PAPER_TUNING_SIZE) -> int:
    """``requested`` images for tuning, or half of a set smaller than 2 * requested."""
    if n < 2:
        raise ValueError(f"a set of {n} image(s) cannot be split into tuning and test images")
    return requested if n >= 2 * requested else n // 2


def split_indices(n: int, n_tune: int, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded disjoint (tuning, test) index sets covering range(n); both sorted."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[:n_tune].sort().values, order[n_tune:].sort().values


def select_parameters(grid: Grid, in_scores: Tensor, out_scores: Tensor) -> Selection:
    """Pick (T, epsilon) minimizing FPR at 95% TPR; ties: higher AUROC, then larger T, then smaller epsilon.

    ``in_scores`` / ``out_scores``: [len(grid.settings), n] scores of the tuning images for each setting.
    """
    settings = grid.settings
    if in_scores.shape[0] != len(settings) or out_scores.shape[0] != len(settings):
        raise ValueError(f"expected scores for {len(settings)} settings, got {in_scores.shape[0]} and "
                         f"{out_scores.shape[0]}")
    s_in, s_out = in_scores.double().cpu(), out_scores.double().cpu()
    fprs, aurocs = fpr_at_tpr_rows(s_in, s_out).tolist(), auroc_rows(s_in, s_out).tolist()
    best = min(range(len(settings)),
               key=lambda i: (fprs[i], -aurocs[i], -settings[i][0], settings[i][1]))
    temperature, epsilon = settings[best]
    n_eps = len(grid.epsilons)
    return Selection(
        temperature=temperature, epsilon=epsilon, tuning_fpr=fprs[best], tuning_auroc=aurocs[best],
        fpr_grid=[fprs[i:i + n_eps] for i in range(0, len(fprs), n_eps)],
        temperature_on_edge=len(grid.temperatures) > 1 and temperature in (min(grid.temperatures),
                                                                           max(grid.temperatures)),
        epsilon_on_edge=len(grid.epsilons) > 1 and epsilon == max(grid.epsilons),  # epsilon < 0 is meaningless
    )


def parse_floats(values: str | Sequence[float], name: str) -> tuple[float, ...]:
    """'1,2,5' or [1, 2, 5] -> (1.0, 2.0, 5.0), with an error that names the option."""
    items = values.split(",") if isinstance(values, str) else list(values)
    try:
        return tuple(float(v) for v in items if str(v).strip())
    except ValueError as err:
        raise ValueError(f"{name} takes comma-separated numbers, got {values!r}") from err
