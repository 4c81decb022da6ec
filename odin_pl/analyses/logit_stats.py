"""U1 and U2 of equation (4) (paper, section 5.2, Figure 5 a-b, f-g, Figure 10, appendix F).

With the logit gaps d_i = f_y_hat(x) - f_i(x) for the N - 1 classes i != y_hat:

    U1 = (1 / (N-1)) sum_{i != y_hat} d_i          (= Mean(d))
    U2 = (1 / (N-1)) sum_{i != y_hat} d_i^2        (= Var(d) + Mean(d)^2, population variance)

The figure shows the density of U1 per set, E[U2 | U1] per set (binned) and the logits of one in-distribution and
one OOD image.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from torch import Tensor

from odin_pl.analyses.context import IN, AnalysisContext, AnalysisOutput
from odin_pl.analyses.stats import binned_mean, centers, density, shared_edges


def logit_gaps(logits: Tensor) -> Tensor:
    """d_i = f_y_hat - f_i for the N - 1 classes i != y_hat, as [B, N - 1] (float64)."""
    logits = logits.double()
    top = logits.argmax(dim=1, keepdim=True)
    others = torch.ones_like(logits, dtype=torch.bool).scatter_(1, top, False)
    return (logits.gather(1, top) - logits)[others].view(len(logits), -1)


def u1_u2(logits: Tensor) -> tuple[Tensor, Tensor]:
    """(U1, U2) of equation (4) per row of logits."""
    gaps = logit_gaps(logits)
    return gaps.mean(dim=1), gaps.square().mean(dim=1)


def run(ctx: AnalysisContext) -> AnalysisOutput:
    names = [IN, *ctx.ood_datasets]
    stats = {name: u1_u2(ctx.logits(name)) for name in names}
    edges = shared_edges(u1 for u1, _ in stats.values())
    sets = {}
    for name, (u1, u2) in stats.items():
        conditional, counts = binned_mean(u1, u2, edges)
        sets[name] = {"n": len(u1), "u1_mean": u1.mean().item(), "u2_mean": u2.mean().item(),
                      "u1_density": density(u1, edges), "e_u2_given_u1": conditional, "bin_counts": counts}
    first_ood = next(iter(ctx.ood_datasets))
    examples = {name: {"index": int(ctx.sample(name)[0]), "logits": ctx.logits(name)[0].tolist()}
                for name in (IN, first_ood)}
    data = {"images": "a seeded sample of each set's test split", "u1_bin_edges": edges.tolist(),
            "u1_bin_centers": centers(edges), "sets": sets, "example_logits": examples,
            "class_names": list(ctx.class_names)}
    return ctx.write("logit-stats", data, _figure(data))


def _figure(data: dict) -> plt.Figure:
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
    x = data["u1_bin_centers"]
    for name, values in data["sets"].items():
        style = {"color": "tab:red", "lw": 2} if name == IN else {}
        axes[0].plot(x, values["u1_density"], label=name, **style)
        axes[1].plot(x, [float("nan") if v is None else v for v in values["e_u2_given_u1"]], label=name, **style)
    axes[0].set(xlabel="U1", ylabel="density", title="(a) density of U1")
    axes[1].set(xlabel="U1", ylabel="E[U2 | U1]", title="(b) E[U2 | U1]")
    axes[0].legend(fontsize=7)
    for ax, (name, example) in zip(axes[2:], data["example_logits"].items()):
        classes = data["class_names"] or [str(i) for i in range(len(example["logits"]))]
        ax.bar(range(len(classes)), example["logits"], color="tab:red" if name == IN else "tab:blue")
        ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=6 if len(classes) > 20 else 8)
        ax.set(ylabel="logit", title=f"logits of {name} image #{example['index']}")
    return fig
