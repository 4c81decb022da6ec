"""Several finished evaluations of one setting (e.g. checkpoints of different training seeds): per result row, the
mean and sample standard deviation (ddof = 1) of every metric across them (DESIGN, "Uncertainty"); for runs of
OpenOOD's protocol also OpenOOD's statistic of its metrics, the mean and population standard deviation (ddof = 0,
``np.std``), as ``openood_<metric>_mean`` / ``openood_<metric>_std_pop``, on every set and the near/far means.

The evaluations must share the in-distribution data set, the evaluation seed, the splits, the mode, the methods and
their grids, so that only the checkpoint differs; otherwise :func:`aggregate_results` refuses and names what
differs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from odin_pl.metrics import METRIC_NAMES
from odin_pl.openood_metrics import OPENOOD_METRIC_NAMES, seed_mean_std
from odin_pl.report.tables import TABLE_METRICS
from odin_pl.errors import MissingFileError, UserError
from odin_pl.files import atomic_write

SHARED = ("dataset", "seed", "splits", "mode", "tune_on", "methods", "grids", "grid", "protocol")  # equal in all runs
OPENOOD_FIELDS = tuple(f"openood_{metric}" for metric in (*OPENOOD_METRIC_NAMES, "acc"))


def _shared(results: dict[str, Any], key: str) -> Any:
    return results.get("image_spec", {}).get("dataset") if key == "dataset" else results.get(key)


def aggregate_results(results: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """``{"runs", "rows"}``: per (OOD set, method, tuning set) row, ``<metric>_mean`` and ``<metric>_std``."""
    if len(results) < 2:
        raise UserError("aggregate needs at least two evaluation folders: one run has no standard deviation")
    for name, result in zip(names[1:], results[1:]):
        for key in SHARED:
            if _shared(result, key) != _shared(results[0], key):
                raise UserError(f"{name} differs from {names[0]} in {key!r}: aggregate evaluations of one setting "
                                "(same data set, evaluation seed, splits, mode, methods and grids; only the "
                                "checkpoint differs)")
    keys = [[(r["ood"], r["method"], r["tuned_on"]) for r in result["records"]] for result in results]
    if any(k != keys[0] for k in keys[1:]):
        raise UserError(f"the evaluations report different rows (OOD sets, methods or tunings): {', '.join(names)}")
    rows = []
    for position, (ood, method, tuned_on) in enumerate(keys[0]):
        row: dict[str, Any] = {"ood": ood, "method": method, "tuned_on": tuned_on}
        for metric in METRIC_NAMES:
            values = np.array([result["records"][position][metric] for result in results], dtype=np.float64)
            row[f"{metric}_mean"], row[f"{metric}_std"] = float(values.mean()), float(values.std(ddof=1))
        rows.append({**row, **_openood_stats([result["records"][position] for result in results])})
    groups = [result.get("openood", {}).get("group_records", []) for result in results]
    for position, group in enumerate(groups[0]):
        rows.append({"ood": group["group"], "method": group["method"], "tuned_on": None,
                     **_openood_stats([records[position] for records in groups])})
    return {"runs": list(names), "n_runs": len(results), "statistic": "mean and sample standard deviation (ddof=1)",
            **({"openood_statistic": "OpenOOD's: mean and population standard deviation (ddof=0), _std_pop"}
               if groups[0] else {}), "rows": rows}


def _openood_stats(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """OpenOOD's mean and population std over the runs of each OpenOOD field the rows have."""
    stats = {}
    for key in OPENOOD_FIELDS:
        if all(key in row for row in rows):
            stats[f"{key}_mean"], stats[f"{key}_std_pop"] = seed_mean_std([row[key] for row in rows])
    return stats


def aggregate_table(aggregate: dict[str, Any]) -> str:
    """Markdown: one row per (OOD set, method, tuning set), each metric as 'mean ± std' in percent."""
    header = ["OOD set", "method", "tuned on", *(label for _, label in TABLE_METRICS)]
    lines = [f"**{aggregate['n_runs']} evaluations: mean ± standard deviation**", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in aggregate["rows"]:
        if f"{METRIC_NAMES[0]}_mean" not in row:  # a near/far mean: OpenOOD's table only
            continue
        cells = [row["ood"], row["method"], row["tuned_on"] or ""]
        cells += [f"{100 * row[f'{key}_mean']:.1f} ± {100 * row[f'{key}_std']:.1f}" for key, _ in TABLE_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Values are percentages over the evaluations' checkpoints (sample standard deviation); "
              "in-distribution is the positive class."]
    openood = [row for row in aggregate["rows"] if "openood_auroc_mean" in row]
    if openood:
        names = ("fpr95", "auroc", "aupr_in", "aupr_out", "acc")
        lines += ["", f"**OpenOOD v1.5: mean ± population std over {aggregate['n_runs']} evaluations**", "",
                  "| set | method | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for row in openood:
            cells = [f"{100 * row[f'openood_{k}_mean']:.2f} ± {100 * row[f'openood_{k}_std_pop']:.2f}"
                     if f"openood_{k}_mean" in row else "" for k in names]
            lines.append(f"| {row['ood']} | {row['method']} | " + " | ".join(cells) + " |")
        lines += ["", "OpenOOD's metrics (OOD positive), x100; std with ddof = 0 as OpenOOD reports it."]
    return "\n".join(lines)


def aggregate_runs(run_dirs: Sequence[str | Path], output_dir: str | Path) -> dict[str, Any]:
    """Aggregate the results.json of finished evaluation folders; writes aggregate.json and aggregate.md to
    ``output_dir`` (atomically: never half-written) and returns the aggregate."""
    results = []
    for run_dir in map(Path, run_dirs):
        path = run_dir / "results.json"
        if not path.is_file():
            raise MissingFileError(f"{path} does not exist: give the output folders of finished protocol runs")
        results.append(json.loads(path.read_text()))
    aggregate = aggregate_results(results, [str(d) for d in run_dirs])
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "aggregate.json") as handle:
        handle.write(json.dumps(aggregate, indent=2))
    with atomic_write(out / "aggregate.md") as handle:
        handle.write(aggregate_table(aggregate) + "\n")
    return aggregate
