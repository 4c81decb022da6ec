"""OpenOOD v1.5's tables (its ``evaluation_api`` layout): per method, rows = the near-OOD sets, their mean, the
far-OOD sets, their mean; columns FPR@95 (OOD positive), AUROC, AUPR_IN, AUPR_OUT, ACC; values x100. And a
summary, one row per method: the near and far means of AUROC and FPR@95, and the ID accuracy."""

from __future__ import annotations

from typing import Mapping

from odin_pl.protocol.openood import PREFIX, OpenOODResult

COLUMNS = (("fpr95", "FPR@95 ↓"), ("auroc", "AUROC ↑"), ("aupr_in", "AUPR_IN ↑"), ("aupr_out", "AUPR_OUT ↑"),
           ("acc", "ACC ↑"))
NOTE = ("OpenOOD v1.5 protocol: each method's setting searched once on ID val + OOD val ({val}) by AUROC, then used "
        "for every test set (full ID test set + that set); OOD is the positive class, OpenOOD's metrics "
        "(scikit-learn's ROC with drop_intermediate, trapezoidal AUPR); near/far = unweighted means; values x100.")
INTERVALS = " Brackets: 95% paired percentile bootstrap intervals over the test images (given the search)."


def _cell(metrics: Mapping[str, float], intervals: Mapping[str, float], key: str, show: bool) -> str:
    value = metrics.get(f"{PREFIX}{key}")
    if value is None:
        return ""
    text = f"{100 * value:.2f}"
    low = intervals.get(f"{PREFIX}{key}_ci_low")
    if show and low is not None:
        text += f" [{100 * low:.2f}, {100 * intervals[f'{PREFIX}{key}_ci_high']:.2f}]"
    return text


def openood_method_table(result: OpenOODResult, method: str, intervals: bool = False) -> str:
    """One method's table in OpenOOD's layout (rows: near sets, nearood, far sets, farood)."""
    records = {r.ood: r for r in result.records if r.method == method}
    means = {g.group: g for g in result.group_records if g.method == method}
    lines = [f"**{method}** (OpenOOD v1.5, {result.benchmark})", "",
             "| | " + " | ".join(label for _, label in COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for group, members in result.groups.items():
        for name in members:
            r = records[name]
            lines.append(f"| {name} | " + " | ".join(_cell(r.metrics, r.intervals, k, intervals) for k, _ in COLUMNS)
                         + " |")
        g = means[group]
        lines.append(f"| **{group}ood** | " + " | ".join(_cell(g.metrics, g.intervals, k, intervals)
                                                      for k, _ in COLUMNS) + " |")
    return "\n".join(lines)


def openood_summary(result: OpenOODResult, intervals: bool = False) -> str:
    """One row per method: near/far AUROC and FPR@95 (group means) and ACC, as OpenOOD's leaderboard."""
    groups = list(result.groups)
    header = [*(f"{g}-OOD AUROC ↑" for g in groups), *(f"{g}-OOD FPR@95 ↓" for g in groups), "ACC ↑"]
    lines = [f"**OpenOOD v1.5, {result.benchmark}: near/far means**", "", "| method | " + " | ".join(header) + " |",
             "|---|" + "---|" * len(header)]
    for method in dict.fromkeys(r.method for r in result.records):
        means = {g.group: g for g in result.group_records if g.method == method}
        cells = [_cell(means[g].metrics, means[g].intervals, key, intervals) for key in ("auroc", "fpr95")
                 for g in groups]
        cells.append(_cell(means[groups[0]].metrics, {}, "acc", False))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def openood_tables(result: OpenOODResult, intervals: bool = False) -> str:
    """The summary, then each method's table in OpenOOD's layout, and the note (with the skipped sets)."""
    val = next((name for by_set in result.selections.values() for name in by_set), "OOD val")
    tables = [openood_summary(result, intervals),
              *(openood_method_table(result, m, intervals) for m in dict.fromkeys(r.method for r in result.records))]
    note = NOTE.format(val=val) + (INTERVALS if intervals else "")
    if result.skipped:
        note += f" Skipped (not here): {', '.join(result.skipped)}."
    return "\n\n".join([*tables, note])
