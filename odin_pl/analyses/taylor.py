"""The softmax score at large T (paper, section 5.2, equation (3), appendices D and E), checked on real logits.

With d_i = f_y_hat - f_i (d_y_hat = 0) over all N classes:

    S(x; T)  ~  1 / (N - (1/T) sum_i d_i + (1/(2T^2)) sum_i d_i^2)           equation (3), error O(1/T^3)
    T (N - 1 / S(x; T))  ->  sum_i d_i = (N - 1) U1(x)   as T -> inf          Proposition 1, error O(1/T)

Both errors are evaluated in float64 on the logits of in-distribution test images, in forms free of cancellation
(expm1), so that they stay exact where S itself no longer resolves them; the largest error over the images is
reported per T, with the convergence order estimated from the two largest T.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import torch
from torch import Tensor

from odin_pl.analyses.context import IN, AnalysisContext, AnalysisOutput
from odin_pl.methods.msp import max_softmax

TEMPERATURES = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0)
SCATTER_TEMPERATURES = (10.0, 100.0, 1000.0)


def _scaled_gaps(logits: Tensor, temperature: float) -> Tensor:
    """u_i = d_i / T for all N classes (u_y_hat = 0), float64."""
    logits = logits.double()
    return (logits.amax(dim=1, keepdim=True) - logits) / temperature


def second_order_score(logits: Tensor, temperature: float) -> Tensor:
    """Equation (3): 1 / (N - (1/T) sum_i d_i + (1/(2 T^2)) sum_i d_i^2) per row of logits (float64)."""
    u = _scaled_gaps(logits, temperature)
    return 1 / (logits.shape[1] - u.sum(dim=1) + u.square().sum(dim=1) / 2)


def expansion_error(logits: Tensor, temperature: float) -> Tensor:
    """S(x; T) - equation (3) per row, free of cancellation: with D = sum_i exp(-u_i) = 1 / S and D3 = 1 / (3),
    S - (3) = (D3 - D) / (D D3) and D3 - D = -sum_i [expm1(-u_i) + u_i - u_i^2 / 2] (~ sum_i u_i^3 / 6)."""
    u = _scaled_gaps(logits, temperature)
    d = logits.shape[1] + torch.expm1(-u).sum(dim=1)
    d3 = 1 / second_order_score(logits, temperature)
    return -(torch.expm1(-u) + u - u.square() / 2).sum(dim=1) / (d * d3)


def proposition1_gap(logits: Tensor, temperature: float) -> Tensor:
    """T (N - 1 / S(x; T)) - (N - 1) U1(x) per row, which tends to 0 as T -> inf (Proposition 1); computed free of
    cancellation as -T sum_i [expm1(-u_i) + u_i] (~ -(N - 1) U2 / (2T))."""
    u = _scaled_gaps(logits, temperature)
    return -temperature * (torch.expm1(-u) + u).sum(dim=1)


def convergence_order(errors: dict[float, float]) -> float:
    """p in error ~ C / T^p, from the two largest T."""
    (t1, e1), (t2, e2) = sorted(errors.items())[-2:]
    return math.log(e1 / e2) / math.log(t2 / t1)


def run(ctx: AnalysisContext) -> AnalysisOutput:
    logits = ctx.logits(IN)
    taylor = {t: expansion_error(logits, t).abs().max().item() for t in TEMPERATURES}
    limit = {t: proposition1_gap(logits, t).abs().max().item() for t in TEMPERATURES}
    data = {"images": f"{len(logits)} in-distribution test images (a seeded sample)", "temperatures": TEMPERATURES,
            "max_abs_error_equation3": list(taylor.values()), "max_abs_error_proposition1": list(limit.values()),
            "order_equation3": convergence_order(taylor), "order_proposition1": convergence_order(limit),
            "expected_orders": {"equation3": 3, "proposition1": 1},
            "scatter": {f"T={t:g}": {"exact": max_softmax(logits, t).tolist(),
                                     "second_order": second_order_score(logits, t).tolist()}
                        for t in SCATTER_TEMPERATURES}}
    return ctx.write("taylor", data, _figure(data))


def _figure(data: dict) -> plt.Figure:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for label, points in data["scatter"].items():
        axes[0].scatter(points["exact"], points["second_order"], s=4, alpha=0.5, label=label)
    low, high = axes[0].get_xlim()
    axes[0].plot([low, high], [low, high], color="0.5", lw=0.8)
    axes[0].set(xlabel="S(x; T)", ylabel="second-order expansion (3)", title="softmax score vs equation (3)")
    axes[0].legend(fontsize=7)
    temperatures = data["temperatures"]
    axes[1].loglog(temperatures, data["max_abs_error_equation3"], "o-",
                   label=f"|S - (3)|, order {data['order_equation3']:.2f}")
    axes[1].loglog(temperatures, data["max_abs_error_proposition1"], "s-",
                   label=f"|T(N - 1/S) - (N-1)U1|, order {data['order_proposition1']:.2f}")
    axes[1].set(xlabel="T", ylabel="largest error over images", title="convergence in T")
    axes[1].legend(fontsize=7)
    return fig
