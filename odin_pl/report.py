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


def _pairs(records: Sequence[dict]) -> list[tuple[dict, dict]]:
    by_set: dict[str, dict[str, dict]] = {}
    for record in records:
        by_set.setdefault(record["ood"], {})[record["method"]] = record
    return [(methods["msp"], methods["odin"]) for methods in by_set.values()]


def markdown_table(records: Sequence[dict], title: str = "") -> str:
    """Table 2 of the paper: one row per OOD set, each metric as 'baseline / ODIN' in percent."""
    header = ["OOD set", *(label for _, label in TABLE_METRICS), "T", "epsilon", "n_in / n_out"]
    lines = [f"**{title}**", ""] if title else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for msp, odin in _pairs(records):
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
