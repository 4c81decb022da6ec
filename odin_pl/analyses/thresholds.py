"""The detector's threshold delta, from the protocol's test-split scores (paper, appendix H and I).

* ``threshold`` (Figure 13): TPR(delta) = mean(S_in >= delta) and FPR(delta) = mean(S_out >= delta) for each set
  and method at its main-table setting, with delta* (95% TPR) marked.
* ``accuracy`` (Figure 16): classification accuracy on the in-distribution test images with S >= delta and with
  S < delta, where delta is the threshold for TPR = 50%, 51%, ..., 99%, for every method and setting reported.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from odin_pl.analyses.context import IN, AnalysisContext, AnalysisOutput
from odin_pl.methods import method_with_role
from odin_pl.metrics import threshold_at_tpr
from odin_pl.protocol.plan import MethodGrid

N_THRESHOLDS = 201
TPRS = tuple(p / 100 for p in range(50, 100))


def _setting_label(grid: MethodGrid, setting: tuple[float, ...]) -> str:
    """'baseline (MSP)', 'odin T=1000, epsilon=0.0014', 'energy T=1', 'maxlogit'."""
    if grid.name == method_with_role("baseline"):
        return f"baseline ({grid.name.upper()})"
    labels = [p.label for p in grid.method.params]
    return " ".join([grid.name, ", ".join(f"{label}={value:g}" for label, value in zip(labels, setting))]).strip()


def run_threshold(ctx: AnalysisContext) -> AnalysisOutput:
    """Per OOD set and method other than the baseline (the paper's method alone in the default run, as in the
    paper), the TPR and FPR curves."""
    baseline = method_with_role("baseline")
    grids = [g for g in ctx.result.methods if g.name != baseline] or list(ctx.result.methods)
    sets: dict[str, dict] = {}
    for name, records in ctx.result.main_records().items():
        for grid in grids:
            record = records[grid.name]
            s_in, s_out = (s.double() for s in ctx.result.test_scores[name][grid.name])
            pooled = torch.cat([s_in, s_out])
            deltas = torch.linspace(pooled.min().item(), pooled.max().item(), N_THRESHOLDS, dtype=torch.float64)
            sets.setdefault(name, {})[grid.name] = {
                "params": dict(record.params),
                "label": _setting_label(grid, record.setting), "thresholds": deltas.tolist(),
                "tpr": (s_in[None, :] >= deltas[:, None]).double().mean(dim=1).tolist(),
                "fpr": (s_out[None, :] >= deltas[:, None]).double().mean(dim=1).tolist(),
                "threshold_at_95_tpr": threshold_at_tpr(s_in, 0.95), "fpr_at_95_tpr": record.metrics["fpr_at_95_tpr"]}
    return ctx.write("threshold", {"split": "test", "sets": sets}, _threshold_figure(sets))


def _threshold_figure(sets: dict) -> plt.Figure:
    panels = [(name, curve) for name, by_method in sets.items() for curve in by_method.values()]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False)
    for ax, (name, curve) in zip(axes[0], panels):
        ax.plot(curve["thresholds"], [100 * v for v in curve["tpr"]], color="tab:red", label="TPR")
        ax.plot(curve["thresholds"], [100 * v for v in curve["fpr"]], color="tab:blue", label="FPR")
        ax.axvline(curve["threshold_at_95_tpr"], color="0.5", ls="--", lw=0.8, label="95% TPR")
        ax.set(xlabel="threshold delta", ylabel="%", title=f"{name} ({curve['label']})")
        ax.locator_params(axis="x", nbins=4)
    axes[0][0].legend(fontsize=7)
    return fig


def run_accuracy(ctx: AnalysisContext) -> AnalysisOutput:
    test = ctx.test_indices(IN)
    logits, labels = ctx.forward(IN, test)
    correct = (logits.argmax(dim=1) == labels).double()
    curves = {}
    grids = {grid.name: grid for grid in ctx.result.methods}
    for (method, setting), s_in in ctx.result.in_test_scores.items():  # every method and setting reported
        s_in = s_in.double()
        above = [s_in >= threshold_at_tpr(s_in, tpr) for tpr in TPRS]
        curves[_setting_label(grids[method], setting)] = {"above": [_mean(correct[a]) for a in above],
                                                   "below": [_mean(correct[~a]) for a in above]}
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
