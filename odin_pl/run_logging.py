"""Log a protocol run to the experiment logger: metrics, the results table, figures, ROC curves, analyses."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Mapping

from lightning.pytorch.loggers import WandbLogger

from odin_pl.analyses import AnalysisOutput, scalar_metrics
from odin_pl.evaluation import ProtocolRun
from odin_pl.loggers import default_logger, describe_logger
from odin_pl.plots import roc_points
from odin_pl.report import main_records

FIGURE_KINDS = ("roc", "scores", "grid")  # one W&B panel per kind: images of one size
ROC_POINTS = 500  # points per logged ROC curve


def run_metrics(run: ProtocolRun, analyses: Mapping[str, AnalysisOutput]) -> dict[str, float]:
    """``ood/<set>/<method>/<metric>`` for every numeric field of each set's and method's main record (tuned on the
    set itself in cross mode: one record per key), and the analyses' scalars."""
    metrics = {f"ood/{name}/{method}/{k}": v for name, records in main_records(run.result.records).items()
               for method, r in records.items() for k, v in r.items() if isinstance(v, float)}
    for name, output in analyses.items():
        metrics.update(scalar_metrics(output.numbers, f"analyses/{name}"))
    return metrics


def log_run(out: Path, run: ProtocolRun, figures: list[Path], analyses: Mapping[str, AnalysisOutput]) -> str:
    """Log the run to W&B (offline without network) or CSV under ``out``; returns where it went (one line)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        logger = default_logger(out, name="evaluate")
    logger.log_hyperparams({"title": run.title, "mode": run.mode, "seed": run.config.seed,
                            "tune_on": run.config.tuning.tune_on})
    logger.log_metrics(run_metrics(run, analyses))
    if isinstance(logger, WandbLogger):
        _log_wandb_media(logger, run, figures, analyses)
    logger.finalize("success")
    return describe_logger(logger)


def _log_wandb_media(logger: WandbLogger, run: ProtocolRun, figures: list[Path],
                     analyses: Mapping[str, AnalysisOutput]) -> None:
    """The results table, the figures, the analyses (figure, and the numbers as a run file) and ROC line plots."""
    import wandb

    records = run.result.records
    columns = [k for k in records[0] if k != "grid_edge"]
    logger.log_table("results", columns=columns, data=[[r.get(c) for c in columns] for r in records])
    for kind in FIGURE_KINDS:
        group = [f for f in figures if f.stem.startswith(f"{kind}_")]
        if group:
            logger.log_image(f"figures/{kind}", images=[str(f) for f in group], caption=[f.stem for f in group])
    run_files = Path(logger.experiment.dir) / "analyses"  # uploaded with the run
    for name, output in analyses.items():
        if output.figure_path is not None:
            logger.log_image(f"analyses/{name}", images=[str(output.figure_path)])
        run_files.mkdir(exist_ok=True)
        shutil.copy(output.json_path, run_files / output.json_path.name)
    for name, scores in run.result.test_scores.items():
        curves = {method: roc_points(*pair) for method, pair in scores.items()}
        xs = [fpr[::max(1, len(fpr) // ROC_POINTS)].tolist() for fpr, _ in curves.values()]
        ys = [tpr[::max(1, len(tpr) // ROC_POINTS)].tolist() for _, tpr in curves.values()]
        logger.experiment.log({f"roc/{name}": wandb.plot.line_series(xs=xs, ys=ys, keys=list(curves),
                                                                     title=f"ROC {name}", xname="FPR")})


