"""Paper-style tables (percentages) and result files (fractions): results.json, results.csv, table.md."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from odin_pl.csv_cells import safe_row
from odin_pl.files import atomic_write
from odin_pl.methods import method_with_role
from odin_pl.protocol.records import ProtocolResult, Record

TABLE_METRICS = (("fpr_at_95_tpr", "FPR at 95% TPR ↓"), ("detection_error", "Detection error ↓"),
                 ("auroc", "AUROC ↑"), ("aupr_in", "AUPR-In ↑"), ("aupr_out", "AUPR-Out ↑"))
INTERVALS_NOTE = " Brackets: 95% paired percentile bootstrap intervals over the test images (given the tuning)."
PAPER_NOTE = ("Values are percentages, baseline ({baseline}, Hendrycks & Gimpel) / {paper}; in-distribution is the "
              "positive class.")


def _shown(method: str) -> str:
    """A method as the tables name it: the paper's method in capitals, as the paper writes it."""
    return method.upper() if method == method_with_role("paper") else method


def cross_table(result: ProtocolResult, method: str, metric: str = "fpr_at_95_tpr") -> str:
    """Tables 10 and 11 of the paper: rows = test set, columns = tuning set, cells 'baseline / <method>' (percent;
    the method alone when the run has no baseline)."""
    baseline = {r.ood: r for r in result.records if r.method == method_with_role("baseline")}
    tuned = {(r.ood, r.tuned_on): r for r in result.records if r.method == method}
    tuning_sets = list(dict.fromkeys(t for _, t in tuned))
    test_sets = list(dict.fromkeys(name for name, _ in tuned))
    label = f"baseline / {_shown(method)}" if baseline else _shown(method)
    lines = [f"{metric} by test set (rows) and tuning set (columns), {label}, percent", "",
             "| test set \\ tuned on | " + " | ".join(tuning_sets) + " |", "|---|" + "---|" * len(tuning_sets)]
    for name in test_sets:
        cells = [(f"{100 * baseline[name].metrics[metric]:.1f} / " if name in baseline else "")
                 + f"{100 * tuned[name, t].metrics[metric]:.1f}" for t in tuning_sets]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def percent(record: Record, key: str, intervals: bool = False) -> str:
    """'12.3', or with ``intervals`` and the record's bootstrap fields, '12.3 [10.1, 14.6]' (percent)."""
    text = f"{100 * record.metrics[key]:.1f}"
    if intervals and f"{key}_ci_low" in record.intervals:
        text += f" [{100 * record.intervals[f'{key}_ci_low']:.1f}, {100 * record.intervals[f'{key}_ci_high']:.1f}]"
    return text


def paper_table(result: ProtocolResult, title: str = "", intervals: bool = False) -> str:
    """Table 2 of the paper: one row per OOD set, each metric as 'baseline / <paper method>' in percent (with
    ``intervals``, each number followed by its bootstrap interval), and the paper method's chosen parameters."""
    baseline, paper = method_with_role("baseline"), method_with_role("paper")
    labels = [p.label for p in result.plan.method(paper).method.params]
    header = ["OOD set", *(label for _, label in TABLE_METRICS), *labels, "n_in / n_out"]
    lines = [f"**{title}**", ""] if title else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, records in result.main_records().items():
        base, tuned = records[baseline], records[paper]
        cells = [name] + [f"{percent(base, key, intervals)} / {percent(tuned, key, intervals)}"
                          for key, _ in TABLE_METRICS]
        values = [f"{value:.4g}" for value in tuned.setting]
        if values and tuned.grid_edge:
            values[-1] += f" ({tuned.grid_edge})"
        cells += [*values, f"{tuned.n_in} / {tuned.n_out}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", PAPER_NOTE.format(baseline=baseline.upper(), paper=_shown(paper))
              + (INTERVALS_NOTE if intervals else "")]
    return "\n".join(lines)


def methods_table(result: ProtocolResult, title: str = "", intervals: bool = False) -> str:
    """One row per method, one column per OOD set: FPR at 95% TPR and AUROC (percent) of its main entry (with
    ``intervals``, each followed by its bootstrap interval)."""
    by_set = result.main_records()
    lines = [f"**{title}**", ""] if title else []
    lines += ["| method | " + " | ".join(by_set) + " |", "|---|" + "---|" * len(by_set)]
    for method in dict.fromkeys(r.method for r in result.records):
        cells = [f"{percent(by_set[name][method], 'fpr_at_95_tpr', intervals)} / "
                 f"{percent(by_set[name][method], 'auroc', intervals)}" for name in by_set]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "Values are percentages, FPR at 95% TPR ↓ / AUROC ↑; in-distribution is the positive class."
              + (INTERVALS_NOTE if intervals else "")]
    return "\n".join(lines)


def results_tables(result: ProtocolResult, title: str = "", cross: bool = False, intervals: bool = False) -> str:
    """The paper's table when the methods are exactly the baseline and the paper's method (with tables 10/11 in
    cross mode); with other methods, the methods table (and in cross mode one cross table per tuned method).
    ``intervals``: show the bootstrap intervals in the main table."""
    methods = list(dict.fromkeys(r.method for r in result.records))
    if sorted(methods) == sorted({method_with_role("baseline"), method_with_role("paper")}):
        tables = [paper_table(result, title, intervals)] + (
            [cross_table(result, method_with_role("paper"))] if cross else [])
    else:
        tuned = [m for m in methods if any(r.method == m and r.tuned_on is not None for r in result.records)]
        tables = [methods_table(result, title, intervals)] + (
            [cross_table(result, m) for m in tuned] if cross else [])
    return "\n\n".join(tables)


def csv_columns(records: Sequence[Record]) -> list[str]:
    """results.csv's columns: set, method, metrics, every method's parameters, sizes, tuning set, then the bootstrap
    fields (the tuning's FPR and grid-edge note stay in results.json)."""
    return [*_keys([{"ood": 0, "method": 0, "protocol": 0, **r.metrics} for r in records]),
            *_keys([r.params for r in records]),
            "n_in", "n_out", "tuned_on", *_keys([r.intervals for r in records])]


def _keys(mappings: Sequence[Mapping[str, Any]]) -> list[str]:
    return list(dict.fromkeys(key for mapping in mappings for key in mapping))


def write_results(output_dir: str | Path, records: Sequence[Record], meta: dict[str, Any], table: str
                  ) -> list[Path]:
    """Write results.json (meta + records), results.csv and table.md, each atomically (:func:`atomic_write`);
    return their paths."""
    out = Path(output_dir)
    paths = [out / "results.json", out / "results.csv", out / "table.md"]
    with atomic_write(paths[0]) as handle:
        handle.write(json.dumps({**meta, "records": [r.to_dict() for r in records]}, indent=2, default=str))
    with atomic_write(paths[1], newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=csv_columns(records), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(safe_row(r.to_dict()) for r in records)
    with atomic_write(paths[2]) as handle:
        handle.write(table + "\n")
    return paths
