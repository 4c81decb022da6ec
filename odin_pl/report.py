"""Paper-style tables (percentages) and result files (fractions): results.json, results.csv, table.md."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Sequence

TABLE_METRICS = (("fpr_at_95_tpr", "FPR at 95% TPR ↓"), ("detection_error", "Detection error ↓"),
                 ("auroc", "AUROC ↑"), ("aupr_in", "AUPR-In ↑"), ("aupr_out", "AUPR-Out ↑"))
CSV_FIELDS = ("ood", "method", "fpr_at_95_tpr", "detection_error", "auroc", "aupr_in", "aupr_out",
              "fpr_at_95_tpr_ood_positive", "temperature", "epsilon", "n_in", "n_out", "tuned_on")


def method_pairs(records: Sequence[dict]) -> list[tuple[dict, dict]]:
    """(MSP, ODIN) records per OOD set; ODIN tuned on the set itself when several tunings were reported."""
    by_set: dict[str, dict[str, dict]] = {}
    for record in records:
        methods = by_set.setdefault(record["ood"], {})
        if record["method"] not in methods or record.get("tuned_on") == record["ood"]:
            methods[record["method"]] = record
    return [(methods["msp"], methods["odin"]) for methods in by_set.values()]


def cross_table(records: Sequence[dict], metric: str = "fpr_at_95_tpr") -> str:
    """Tables 10 and 11 of the paper: rows = test set, columns = tuning set, cells 'baseline / ODIN' (percent)."""
    msp = {r["ood"]: r for r in records if r["method"] == "msp"}
    odin = {(r["ood"], r["tuned_on"]): r for r in records if r["method"] == "odin"}
    tuning_sets = list(dict.fromkeys(t for _, t in odin))
    lines = [f"{metric} by test set (rows) and tuning set (columns), baseline / ODIN, percent", "",
             "| test set \\ tuned on | " + " | ".join(tuning_sets) + " |", "|---|" + "---|" * len(tuning_sets)]
    for name in msp:
        cells = [f"{100 * msp[name][metric]:.1f} / {100 * odin[name, t][metric]:.1f}" for t in tuning_sets]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_table(records: Sequence[dict], title: str = "") -> str:
    """Table 2 of the paper: one row per OOD set, each metric as 'baseline / ODIN' in percent."""
    header = ["OOD set", *(label for _, label in TABLE_METRICS), "T", "epsilon", "n_in / n_out"]
    lines = [f"**{title}**", ""] if title else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for msp, odin in method_pairs(records):
        cells = [msp["ood"]] + [f"{100 * msp[key]:.1f} / {100 * odin[key]:.1f}" for key, _ in TABLE_METRICS]
        edge = f" ({odin['grid_edge']})" if odin.get("grid_edge") else ""
        cells += [f"{odin['temperature']:g}", f"{odin['epsilon']:.4g}{edge}", f"{odin['n_in']} / {odin['n_out']}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Values are percentages, baseline (MSP, Hendrycks & Gimpel) / ODIN; in-distribution is the "
              "positive class."]
    return "\n".join(lines)


def write_results(output_dir: str | Path, records: Sequence[dict], meta: dict[str, Any], table: str) -> list[Path]:
    """Write results.json (records + meta), results.csv and table.md; return their paths."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "results.csv", out / "table.md"]
    paths[0].write_text(json.dumps({**meta, "records": list(records)}, indent=2, default=str))
    with paths[1].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    paths[2].write_text(table + "\n")
    return paths
