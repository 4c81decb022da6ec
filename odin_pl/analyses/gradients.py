"""Gradient norms of the log softmax score (paper, section 5.3, Figure 5 c-e, Figures 11 and 12).

For an image with [0, 1] pixels p, normalized as x = (p - mean) / std per channel, the first-order effect of the
input preprocessing is epsilon * ||grad_p log S(p; T)||_1, and by the chain rule grad_p = grad_x / std. The figure
shows the density of the norm at T = 1000 and E[norm | S] at T = 1 and T = 1000, per set.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from odin_pl.analyses.context import IN, AnalysisContext, AnalysisOutput
from odin_pl.analyses.stats import binned_mean, centers, density, shared_edges
from odin_pl.methods.batch import StdLike, check_model_in_eval, std_view
from odin_pl.methods.msp import max_softmax

TEMPERATURES = (1.0, 1000.0)


def gradient_norms(model: nn.Module, x: Tensor, temperatures: Sequence[float], input_std: StdLike) -> Tensor:
    """||grad_p log S(p; T)||_1 per image and T ([len(temperatures), B]) for the normalized batch x.

    S(p; T) = max_i softmax(f(x) / T)_i; ``input_std`` gives grad_p = grad_x / std (None: x is in pixel units).
    """
    check_model_in_eval(model)
    std = std_view(input_std, x)
    with torch.inference_mode(False), torch.enable_grad():
        x_leaf = x.clone().requires_grad_(True)
        logits = model(x_leaf)
        y_hat = logits.argmax(dim=1)
        norms = []
        for i, temperature in enumerate(temperatures):
            log_score = -F.cross_entropy(logits / temperature, y_hat, reduction="sum")  # sum_b log S_b
            (grad,) = torch.autograd.grad(log_score, x_leaf, retain_graph=i < len(temperatures) - 1)
            norms.append((grad / std if std is not None else grad).abs().flatten(1).sum(dim=1))
        return torch.stack(norms).detach()


def run(ctx: AnalysisContext) -> AnalysisOutput:
    names = [IN, *ctx.ood_datasets]
    norms = {name: torch.cat([gradient_norms(ctx.model, x, TEMPERATURES, ctx.input_std).double().cpu()
                              for x, _ in ctx.batches(name, ctx.sample(name))], dim=1) for name in names}
    scores = {name: torch.stack([max_softmax(ctx.logits(name), t) for t in TEMPERATURES]) for name in names}
    top = TEMPERATURES.index(1000.0)
    norm_edges = shared_edges(n[top] for n in norms.values())
    data = {"images": "a seeded sample of each set's test split", "norm": "L1 norm of grad log S wrt [0, 1] pixels",
            "density_at_T=1000": {"bin_edges": norm_edges.tolist(), "bin_centers": centers(norm_edges),
                                  "sets": {name: density(n[top], norm_edges) for name, n in norms.items()}},
            "mean_norm": {f"T={t:g}": {name: n[i].mean().item() for name, n in norms.items()}
                          for i, t in enumerate(TEMPERATURES)}}
    for i, t in enumerate(TEMPERATURES):
        edges = shared_edges(s[i] for s in scores.values())
        data[f"e_norm_given_score_at_T={t:g}"] = {"bin_edges": edges.tolist(), "bin_centers": centers(edges),
                                                  "sets": {name: binned_mean(scores[name][i], norms[name][i], edges)[0]
                                                           for name in names}}
    return ctx.write("gradient-norms", data, _figure(data))


def _figure(data: dict) -> plt.Figure:
    panels = [("density_at_T=1000", "norm of gradient", "density", "(c) density of the norm, T = 1000"),
              ("e_norm_given_score_at_T=1000", "softmax score S", "E[norm | S]", "(d) E[norm | S], T = 1000"),
              ("e_norm_given_score_at_T=1", "softmax score S", "E[norm | S]", "(e) E[norm | S], T = 1")]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, (key, xlabel, ylabel, title) in zip(axes, panels):
        for name, values in data[key]["sets"].items():
            style = {"color": "tab:red", "lw": 2} if name == IN else {}
            ax.plot(data[key]["bin_centers"], [float("nan") if v is None else v for v in values], label=name,
                    **style)
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
        ax.locator_params(axis="x", nbins=4)
    axes[0].legend(fontsize=7)
    return fig
