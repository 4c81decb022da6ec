"""The files of a protocol run: results (table.md, results.json, results.csv), figures and detectors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from odin_pl.deploy.detector import Detector
from odin_pl.evaluation.options import SAVED_CONFIG
from odin_pl.evaluation.run import ProtocolRun
from odin_pl.files import atomic_write, named_file
from odin_pl.methods import method_with_role
from odin_pl.protocol.run import IN_DISTRIBUTION
from odin_pl.training.module import ImageClassifier
from odin_pl.report.plots import plot_grid, plot_histograms, plot_roc
from odin_pl.report.tables import write_results

@dataclass
class RunFiles:
    """What :func:`write_run` wrote."""

    results: list[Path]
    figures: list[Path]
    detectors: list[Path]
    removed: list[Path]


def write_config(out: Path, resolved: str) -> Path:
    """evaluate.py's resolved configuration (YAML) as ``config.yaml`` in ``out``, atomically."""
    with atomic_write(out / SAVED_CONFIG) as handle:
        handle.write(resolved)
    return out / SAVED_CONFIG


def remove_stale(folder: Path, written: Sequence[Path], pattern: str) -> list[Path]:
    """Remove the files ``pattern`` of ``folder`` (not hidden ones) that this run did not write (an earlier run's,
    into the same output folder: they would pass for this run's); returns them."""
    keep = {Path(p).resolve() for p in written}
    stale = sorted(p for p in folder.glob(pattern) if p.is_file() and not p.name.startswith(".")
                   and p.resolve() not in keep) if folder.is_dir() else []
    for path in stale:
        path.unlink()
    return stale


def write_run(run: ProtocolRun, model: ImageClassifier, out: Path) -> RunFiles:
    """Results, one detector per tuning (``detectors/``), then figures (``figures/``) into ``out``: the results and
    detectors (each file written atomically) are on disk before any plotting, which could fail. Detector files and
    figures of an earlier run into ``out`` that this run does not write again are removed (``RunFiles.removed``)."""
    results = write_results(out, run.result.records, run.meta, run.table)
    detectors = write_detectors(run, model, out / "detectors")
    removed = remove_stale(out / "detectors", detectors, "*.json")
    figures = write_figures(run, out / "figures")
    return RunFiles(results, figures, detectors, removed + remove_stale(out / "figures", figures, "*.png"))


def write_figures(run: ProtocolRun, folder: Path) -> list[Path]:
    """ROC curves and score histograms per OOD set (every method), and the paper method's tuning-grid FPR heatmap
    (its two parameters) per tuning set."""
    figures = []
    for name, scores in run.result.test_scores.items():
        figures.append(plot_roc(scores, f"ROC: {name}", named_file(folder, f"roc_{name}.png")))
        figures.append(plot_histograms(scores, name, named_file(folder, f"scores_{name}.png")))
    paper = run.result.plan.method(method_with_role("paper"))
    for name, selection in run.result.selections.get(paper.name, {}).items() if paper else ():
        rows, columns = paper.axes().values()
        figures.append(plot_grid(selection.fpr_grid, rows, columns, selection.setting, f"tuning on {name}",
                                 named_file(folder, f"grid_{name}.png")))
    return figures


def write_detectors(run: ProtocolRun, model: ImageClassifier, folder: Path) -> list[Path]:
    """One :class:`Detector` per tuning of each method (or for its fixed setting; see
    :meth:`ProtocolRun.detector_settings`), its threshold at 95% TPR on the in-distribution test split, so that its
    flags reproduce the reported FPR at 95% TPR; a fitted method's detector records the run's fit file."""
    config = run.config
    info = {"checkpoint": str(config.weights_file), "weights_sha256": run.weights_sha256,
            "in_distribution": run.spec.dataset, "mode": run.mode, "seed": run.result.plan.seed,
            "n_tune": run.result.plan.n_tune, "threshold_split": f"{IN_DISTRIBUTION}/test"}
    saved_fits = run.fits.saved if run.fits is not None else {}
    paths = []
    for stem, (method, setting, ood_set) in run.detector_settings().items():
        in_scores = run.result.in_test_scores[method, setting]
        tuned_on = {**info, "ood_set": ood_set, "n_threshold_images": len(in_scores)}
        detector = Detector.from_scores(model, method, setting, run.spec, in_scores, tuned_on=tuned_on,
                                fit=saved_fits.get(method))
        paths.append(detector.save(named_file(folder, f"{stem}.json")))
    return paths
