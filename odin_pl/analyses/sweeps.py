"""Effects of T and epsilon (paper, Figures 3, 4 and 7-9): FPR at 95% TPR and AUROC along three grid lines.

The curves are read off the protocol's tuning-split scores of the paper's method (the registry's
``method_with_role("paper")``) over its whole grid (no scoring pass): against T at epsilon = 0 (temperature scaling
alone), against epsilon at T = 1 (input preprocessing alone) and against epsilon at T = 1000 (both). A line whose
fixed value is not on the grid is skipped, and the JSON says so.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

from odin_pl.analyses.context import IN, AnalysisContext, AnalysisOutput
from odin_pl.methods import method_with_role
from odin_pl.metrics import ood_metrics

# (x axis, fixed parameter, its value), by parameter label (Param.label) of the paper's method
LINES = (("T", "epsilon", 0.0), ("epsilon", "T", 1.0), ("epsilon", "T", 1000.0))
METRICS = (("fpr_at_95_tpr", "FPR at 95% TPR (%)"), ("auroc", "AUROC (%)"))


def run(ctx: AnalysisContext) -> AnalysisOutput:
    grid = ctx.result.plan.method(method_with_role("paper"))
    scores = ctx.result.tuning_scores.get(grid.name, {}) if grid is not None else {}
    sets = [name for name in scores if name != IN]
    if not sets:
        return ctx.write("sweeps", {"skipped": "no tuning-split scores: the protocol ran with fixed (T, epsilon)"},
                         None)
    labels = [p.label for p in grid.method.params]
    axes = dict(zip(labels, grid.axes().values()))
    index = {setting: i for i, setting in enumerate(grid.settings)}
    lines, skipped = {}, []
    for x_name, fixed_name, fixed in LINES:
        key = f"vs_{x_name}_at_{fixed_name}={fixed:g}"
        if fixed not in axes[fixed_name]:
            skipped.append(f"{key}: {fixed_name} = {fixed:g} is not on the grid")
            continue
        xs = axes[x_name]
        position = labels.index(x_name)
        rows = [index[tuple(x if i == position else fixed for i in range(2))] for x in xs]
        per_set = {name: [ood_metrics(scores[IN][r], scores[name][r]) for r in rows] for name in sets}
        lines[key] = {"x": x_name, "values": list(xs), "sets": {
            name: {metric: [m[metric] for m in values] for metric, _ in METRICS} for name, values in per_set.items()}}
    data = {"split": "tuning", "note": "tuning-split numbers: the protocol's grid scores on each set's held-out "
            "tuning images (and the shared in-distribution tuning images); no new scoring",
            "n_tune": {name: scores[name].shape[1] for name in [IN, *sets]}, "lines": lines, "skipped": skipped}
    return ctx.write("sweeps", data, _figure(lines) if lines else None)


def _figure(lines: dict) -> plt.Figure:
    fig, axes = plt.subplots(len(METRICS), len(lines), figsize=(3.6 * len(lines), 5.6), squeeze=False)
    for col, (key, line) in enumerate(lines.items()):
        for row, (metric, label) in enumerate(METRICS):
            ax = axes[row][col]
            for name, values in line["sets"].items():
                ax.plot(line["values"], [100 * v for v in values[metric]], marker="o", ms=3, label=name)
            if line["x"] == "T":
                ax.set_xscale("log")
            ax.set(xlabel=line["x"], ylabel=label, title=key.replace("_", " ") if row == 0 else None)
    axes[0][0].legend(fontsize=7)
    return fig
