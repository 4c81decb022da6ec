"""The detector's threshold delta, from the protocol's test-split scores (paper, appendix H and I).

* ``threshold`` (Figure 13): TPR(delta) = mean(S_in >= delta) and FPR(delta) = mean(S_out >= delta) at each set's
  chosen (T, epsilon), with delta* (95% TPR) marked.
* ``accuracy`` (Figure 16): classification accuracy on the in-distribution test images with S >= delta and with
  S < delta, where delta is the threshold for TPR = 50%, 51%, ..., 99%, for the baseline and each reported setting.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from odin_pl.analyses.context import IN, AnalysisContext, AnalysisOutput
from odin_pl.metrics import threshold_at_tpr
from odin_pl.protocol import MSP

N_THRESHOLDS = 201
TPRS = tuple(p / 100 for p in range(50, 100))


def _setting_label(temperature: float, epsilon: float) -> str:
    return f"T={temperature:g}, eps={epsilon:g}"


def run_threshold(ctx: AnalysisContext) -> AnalysisOutput:
    sets = {}
    for name, (_, odin) in ctx.reported().items():
        s_in, s_out = (s.double() for s in ctx.result.test_scores[name]["odin"])
        pooled = torch.cat([s_in, s_out])
        deltas = torch.linspace(pooled.min().item(), pooled.max().item(), N_THRESHOLDS, dtype=torch.float64)
        sets[name] = {"temperature": odin["temperature"], "epsilon": odin["epsilon"], "thresholds": deltas.tolist(),
                      "tpr": (s_in[None, :] >= deltas[:, None]).double().mean(dim=1).tolist(),
                      "fpr": (s_out[None, :] >= deltas[:, None]).double().mean(dim=1).tolist(),
                      "threshold_at_95_tpr": threshold_at_tpr(s_in, 0.95), "fpr_at_95_tpr": odin["fpr_at_95_tpr"]}
    return ctx.write("threshold", {"split": "test", "sets": sets}, _threshold_figure(sets))


def _threshold_figure(sets: dict) -> plt.Figure:
    fig, axes = plt.subplots(1, len(sets), figsize=(3.6 * len(sets), 3.2), squeeze=False)
    for ax, (name, curve) in zip(axes[0], sets.items()):
        ax.plot(curve["thresholds"], [100 * v for v in curve["tpr"]], color="tab:red", label="TPR")
        ax.plot(curve["thresholds"], [100 * v for v in curve["fpr"]], color="tab:blue", label="FPR")
        ax.axvline(curve["threshold_at_95_tpr"], color="0.5", ls="--", lw=0.8, label="95% TPR")
        label = _setting_label(curve["temperature"], curve["epsilon"])
        ax.set(xlabel="threshold delta", ylabel="%", title=f"{name} ({label})")
        ax.locator_params(axis="x", nbins=4)
    axes[0][0].legend(fontsize=7)
    return fig


def run_accuracy(ctx: AnalysisContext) -> AnalysisOutput:
    test = ctx.test_indices(IN)
    logits, labels = ctx.forward(IN, test)
    correct = (logits.argmax(dim=1) == labels).double()
    curves = {}
    for setting, s_in in ctx.result.in_test_scores.items():  # MSP and every (T, epsilon) the protocol reported
        s_in = s_in.double()
        above = [s_in >= threshold_at_tpr(s_in, tpr) for tpr in TPRS]
        label = "baseline (MSP)" if setting == MSP else f"ODIN {_setting_label(*setting)}"
        curves[label] = {"above": [_mean(correct[a]) for a in above], "below": [_mean(correct[~a]) for a in above]}
    data = {"split": "test", "n": len(test), "accuracy": correct.mean().item(), "tpr": list(TPRS), "curves": curves}
    return ctx.write("accuracy", data, _accuracy_figure(data))


def _mean(values: torch.Tensor) -> float | None:
    return values.mean().item() if len(values) else None


def _accuracy_figure(data: dict) -> plt.Figure:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    tpr = [100 * t for t in data["tpr"]]
    for label, curve in data["curves"].items():
        for ax, side in zip(axes, ("above", "below")):
            ax.plot(tpr, [float("nan") if v is None else 100 * v for v in curve[side]], label=label)
    for ax, side in zip(axes, ("above", "below")):
        ax.set(xlabel="TPR (%) of the threshold", ylabel="test accuracy (%)", title=f"images {side} the threshold")
    axes[0].legend(fontsize=7)
    return fig
