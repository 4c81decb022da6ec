"""Distances between the in-distribution set and each OOD set, and ODIN's FPR against them (paper, section 4.5,
Figure 2, appendix G).

On flattened [0, 1] pixels of equal-size seeded samples V = {v_1..v_m}, W = {w_1..w_n} (here m = n):

    MMD^2  = sum_{i != j} k(v_i, v_j) / (m (m-1)) + sum_{i != j} k(w_i, w_j) / (n (n-1))
             - 2 sum_{i, j} k(v_i, w_j) / (m n)                    (Gretton et al. 2012, unbiased; may be < 0)
    k(x, y) = exp(-||x - y||^2 / (2 sigma^2)),  2 sigma^2 = median of all pairwise distances ||x - y|| in V u W
    Energy = 2 mean_{i, j} ||v_i - w_j|| - mean_{i < j} ||v_i - v_j|| - mean_{i < j} ||w_i - w_j||
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor

from odin_pl.analyses.context import IN, AnalysisContext, AnalysisOutput
from odin_pl.report.plots import method_styles


def _off_diagonal_mean(matrix: Tensor) -> Tensor:
    m = len(matrix)
    return (matrix.sum() - matrix.diagonal().sum()) / (m * (m - 1))


def _above_diagonal(matrix: Tensor) -> Tensor:
    rows, cols = torch.triu_indices(len(matrix), len(matrix), 1, device=matrix.device)
    return matrix[rows, cols]


def mmd2_and_energy(v: Tensor, w: Tensor) -> dict[str, float]:
    """Unbiased MMD^2 (Gaussian RBF, median heuristic as above) and the energy distance of two samples [m, D],
    [n, D] (m, n >= 2), computed in float64."""
    v, w = v.flatten(1).double(), w.flatten(1).double()
    d_vv, d_ww, d_vw = torch.cdist(v, v), torch.cdist(w, w), torch.cdist(v, w)
    pooled = torch.cat([_above_diagonal(d_vv), _above_diagonal(d_ww), d_vw.flatten()])
    two_sigma2 = float(np.median(pooled.cpu().numpy()))
    k_vv, k_ww, k_vw = (torch.exp(-d.square() / two_sigma2) for d in (d_vv, d_ww, d_vw))
    mmd2 = (_off_diagonal_mean(k_vv) + _off_diagonal_mean(k_ww) - 2 * k_vw.mean()).item()
    energy = (2 * d_vw.mean() - _off_diagonal_mean(d_vv) - _off_diagonal_mean(d_ww)).item()
    return {"mmd2": mmd2, "energy": energy, "two_sigma2": two_sigma2}


def run(ctx: AnalysisContext) -> AnalysisOutput:
    mean = torch.as_tensor(ctx.input_mean, dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.as_tensor(ctx.input_std, dtype=torch.float64).view(1, -1, 1, 1)

    def pixels(name: str, m: int) -> Tensor:
        """The first m images of the set's seeded sample as [0, 1] pixels (float64, on the device)."""
        return ctx.cached(("pixels", name, m), lambda: torch.cat(
            [x.double().cpu() * std + mean for x, _ in ctx.batches(name, ctx.sample(name)[:m])]).to(ctx.device))

    fpr = {name: {method: record.metrics["fpr_at_95_tpr"] for method, record in methods.items()}
           for name, methods in ctx.result.main_records().items()}
    sets = {}
    for name in ctx.ood_datasets:
        m = min(len(ctx.sample(IN)), len(ctx.sample(name)))
        sets[name] = {"m": m, **mmd2_and_energy(pixels(IN, m), pixels(name, m)),
                      "fpr_at_95_tpr": fpr[name]}
    ranked = dict(sorted(sets.items(), key=lambda item: -item[1]["mmd2"]))
    data = {"pixels": "flattened [0, 1] pixels of equal-size seeded samples of the test splits",
            "kernel": "exp(-||x - y||^2 / (2 sigma^2)), 2 sigma^2 = median pairwise distance in the union",
            "sets": ranked}
    return ctx.write("distances", data, _figure(ranked))


def _figure(sets: dict) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(1.1 * len(sets) + 3, 3.6))
    names = list(sets)
    ax.bar(names, [s["mmd2"] for s in sets.values()], color="0.75", label="MMD^2")
    ax.set(ylabel="MMD^2 to in-distribution", title="FPR at 95% TPR against MMD^2")
    twin = ax.twinx()
    methods = next(iter(sets.values()))["fpr_at_95_tpr"]
    for method, style in method_styles(methods).items():
        twin.plot(names, [100 * s["fpr_at_95_tpr"][method] for s in sets.values()], marker="o", **style,
                  label=f"{method} FPR")
    twin.set(ylabel="FPR at 95% TPR (%)")
    ax.tick_params(axis="x", rotation=30)
    twin.legend(*[a + b for a, b in zip(ax.get_legend_handles_labels(), twin.get_legend_handles_labels())],
                fontsize=7)
    return fig
