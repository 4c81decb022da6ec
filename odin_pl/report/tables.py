"""Paper-style tables (percentages) and result files (fractions): results.json, results.csv, table.md."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Sequence

from odin_pl.csv_cells import safe_row
from odin_pl.files import atomic_write

TABLE_METRICS = (("fpr_at_95_tpr", "FPR at 95% TPR ↓"), ("detection_error", "Detection error ↓"),
                 ("auroc", "AUROC ↑"), ("aupr_in", "AUPR-In ↑"), ("aupr_out", "AUPR-Out ↑"))
CSV_FIELDS = ("ood", "method", "fpr_at_95_tpr", "detection_error", "auroc", "aupr_in", "aupr_out",
              "fpr_at_95_tpr_ood_positive", "temperature", "epsilon", "n_in", "n_out", "tuned_on")
INTERVALS_NOTE = " Brackets: 95% paired percentile bootstrap intervals over the test images (given the tuning)."
# The tuning's fields stay in results.json; other methods' parameters become extra columns after CSV_FIELDS.
NOT_IN_CSV = ("tuning_fpr_at_95_tpr", "grid_edge")


def main_records(records: Sequence[dict]) -> dict[str, dict[str, dict]]:
    """Per OOD set, per method, its main-table record (tuned on the set itself when several tunings were
    reported, as in cross mode)."""
    by_set: dict[str, dict[str, dict]] = {}
    for record in records:
        methods = by_set.setdefault(record["ood"], {})
        if record["method"] not in methods or record.get("tuned_on") == record["ood"]:
            methods[record["method"]] = record
    return by_set


def method_pairs(records: Sequence[dict]) -> list[tuple[dict, dict]]:
    """(MSP, ODIN) main records per OOD set."""
    return [(methods["msp"], methods["odin"]) for methods in main_records(records).values()]


def cross_table(records: Sequence[dict], metric: str = "fpr_at_95_tpr", method: str = "odin") -> str:
    """Tables 10 and 11 of the paper: rows = test set, columns = tuning set, cells 'baseline / <method>' (percent;
    the method alone when the run has no MSP baseline)."""
    baseline = {r["ood"]: r for r in records if r["method"] == "msp"}
    tuned = {(r["ood"], r["tuned_on"]): r for r in records if r["method"] == method}
    tuning_sets = list(dict.fromkeys(t for _, t in tuned))
    test_sets = list(dict.fromkeys(name for name, _ in tuned))
    label = "baseline / ODIN" if method == "odin" else (f"baseline / {method}" if baseline else method)
    lines = [f"{metric} by test set (rows) and tuning set (columns), {label}, percent", "",
             "| test set \\ tuned on | " + " | ".join(tuning_sets) + " |", "|---|" + "---|" * len(tuning_sets)]
    for name in test_sets:
        cells = [(f"{100 * baseline[name][metric]:.1f} / " if name in baseline else "")
                 + f"{100 * tuned[name, t][metric]:.1f}" for t in tuning_sets]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def percent(record: dict, key: str, intervals: bool = False) -> str:
    """'12.3', or with ``intervals`` and the record's bootstrap fields, '12.3 [10.1, 14.6]' (percent)."""
    text = f"{100 * record[key]:.1f}"
    if intervals and f"{key}_ci_low" in record:
        text += f" [{100 * record[f'{key}_ci_low']:.1f}, {100 * record[f'{key}_ci_high']:.1f}]"
    return text


def markdown_table(records: Sequence[dict], title: str = "", intervals: bool = False) -> str:
    """Table 2 of the paper: one row per OOD set, each metric as 'baseline / ODIN' in percent (with ``intervals``,
    each number followed by its bootstrap interval)."""
    header = ["OOD set", *(label for _, label in TABLE_METRICS), "T", "epsilon", "n_in / n_out"]
    lines = [f"**{title}**", ""] if title else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for msp, odin in method_pairs(records):
        cells = [msp["ood"]] + [f"{percent(msp, key, intervals)} / {percent(odin, key, intervals)}"
                                for key, _ in TABLE_METRICS]
        edge = f" ({odin['grid_edge']})" if odin.get("grid_edge") else ""
        cells += [f"{odin['temperature']:g}", f"{odin['epsilon']:.4g}{edge}", f"{odin['n_in']} / {odin['n_out']}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Values are percentages, baseline (MSP, Hendrycks & Gimpel) / ODIN; in-distribution is the "
              "positive class." + (INTERVALS_NOTE if intervals else "")]
    return "\n".join(lines)


def methods_table(records: Sequence[dict], title: str = "", intervals: bool = False) -> str:
    """One row per method, one column per OOD set: FPR at 95% TPR and AUROC (percent) of its main entry (with
    ``intervals``, each followed by its bootstrap interval)."""
    by_set = main_records(records)
    methods = list(dict.fromkeys(r["method"] for r in records))
    lines = [f"**{title}**", ""] if title else []
    lines += ["| method | " + " | ".join(by_set) + " |", "|---|" + "---|" * len(by_set)]
    for method in methods:
        cells = [f"{percent(by_set[name][method], 'fpr_at_95_tpr', intervals)} / "
                 f"{percent(by_set[name][method], 'auroc', intervals)}" for name in by_set]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "Values are percentages, FPR at 95% TPR ↓ / AUROC ↑; in-distribution is the positive class."
              + (INTERVALS_NOTE if intervals else "")]
    return "\n".join(lines)


def results_tables(records: Sequence[dict], title: str = "", cross: bool = False, intervals: bool = False) -> str:
    """The paper's table when the methods are MSP and ODIN (with tables 10/11 in cross mode); with other methods,
    the methods table (and in cross mode one cross table per tuned method). ``intervals``: show the bootstrap
    intervals in the main table."""
    methods = list(dict.fromkeys(r["method"] for r in records))
    if sorted(methods) == ["msp", "odin"]:
        tables = [markdown_table(records, title, intervals)] + ([cross_table(records)] if cross else [])
    else:
        tuned = [m for m in methods if any(r["method"] == m and r["tuned_on"] is not None for r in records)]
        tables = [methods_table(records, title, intervals)] + (
            [cross_table(records, method=m) for m in tuned] if cross else [])
    return "\n\n".join(tables)


def write_results(output_dir: str | Path, records: Sequence[dict], meta: dict[str, Any], table: str) -> list[Path]:
    """Write results.json (records + meta), results.csv and table.md, each atomically (:func:`atomic_write`);
    return their paths."""
    out = Path(output_dir)
    paths = [out / "results.json", out / "results.csv", out / "table.md"]
    with atomic_write(paths[0]) as handle:
        handle.write(json.dumps({**meta, "records": list(records)}, indent=2, default=str))
    with atomic_write(paths[1], newline="") as handle:
        params = [key for key in dict.fromkeys(k for r in records for k in r) if key not in CSV_FIELDS
                  and key not in NOT_IN_CSV]
        writer = csv.DictWriter(handle, fieldnames=[*CSV_FIELDS, *params], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(map(safe_row, records))
    with atomic_write(paths[2]) as handle:
        handle.write(table + "\n")
    return paths
