"""Log a protocol run to the experiment logger as an evaluation run: named after the checkpoint's training run and
the mode, in the training run's group, with the resolved configuration (each set's chosen parameters included), the
metrics, the results table, figures, ROC curves, analyses, the result files as an artifact and the evaluated
checkpoint as its input artifact."""

from __future__ import annotations

import shutil
import warnings
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any, Mapping

from lightning.pytorch.loggers import WandbLogger

from odin_pl.analyses import AnalysisOutput, scalar_metrics
from odin_pl.tracking.artifacts import artifact_name, link_checkpoint, log_results
from odin_pl.training.checkpoint import training_record
from odin_pl.evaluation.run import ProtocolRun
from odin_pl.tracking.loggers import build_logger, describe_logger, finish_logger, wandb_run
from odin_pl.protocol.bootstrap import INTERVAL_FIELDS
from odin_pl.protocol.openood import PREFIX as OPENOOD_PREFIX, OpenOODResult
from odin_pl.metrics import METRIC_NAMES
from odin_pl.report.plots import roc_points
from odin_pl.evaluation.outputs import SAVED_CONFIG, RunFiles

FIGURE_KINDS = ("roc", "scores", "grid")  # one W&B panel per kind: images of one size
ROC_POINTS = 500  # points per logged ROC curve
METRIC_PREFIX = "eval/ood"  # the training callback's keys are ood/...: grouped charts must not average the two


def run_metrics(run: ProtocolRun, analyses: Mapping[str, AnalysisOutput]) -> dict[str, float]:
    """``eval/ood/<set>/<method>/<metric>`` for every metric (and its bootstrap interval fields) of each set's and
    method's main record (tuned on the set itself in cross mode: one record per key), and the analyses' scalars.
    The chosen parameters are in the run's config (:func:`evaluation_config`)."""
    fields = [*METRIC_NAMES, *(f"{metric}_{field}" for metric in METRIC_NAMES for field in INTERVAL_FIELDS)]
    metrics = {f"{METRIC_PREFIX}/{name}/{method}/{k}": value
               for name, records in run.result.main_records().items()
               for method, r in records.items() for k, value in {**r.metrics, **r.intervals}.items() if k in fields}
    for name, output in analyses.items():
        metrics.update(scalar_metrics(output.numbers, f"analyses/{name}"))
    return {**metrics, **openood_metrics(run)}


def openood_metrics(run: ProtocolRun) -> dict[str, float]:
    """``eval/openood/<set or near/far>/<method>/<metric>``: OpenOOD's metrics (and their interval fields) of each
    test set and of the near/far means, for a run of OpenOOD's protocol (none otherwise)."""
    result = run.result
    if not isinstance(result, OpenOODResult):
        return {}
    rows = [(r.ood, r.method, {**r.metrics, **r.intervals}) for r in result.records]
    rows += [(g.group, g.method, {**g.metrics, **g.intervals}) for g in result.group_records]
    return {f"eval/openood/{name}/{method}/{key.removeprefix(OPENOOD_PREFIX)}": value
            for name, method, values in rows for key, value in values.items() if key.startswith(OPENOOD_PREFIX)}


def training_names(run: ProtocolRun, training: Mapping[str, Any]) -> tuple[str, str]:
    """(the training run's name, its group) as the checkpoint records them (``training``:
    :func:`odin_pl.training.checkpoint.training_record`); for weights that do not say, the run folder's name for both
    (the
    file's name outside a run folder)."""
    logged = training.get("logger") or {}
    weights = run.config.weights_file.resolve()
    experiment = training.get("experiment") or (weights.parents[1].name if weights.parent.name == "checkpoints"
                                                else weights.stem)
    seed = training.get("seed")
    return (logged.get("name") or (experiment if seed is None else f"{experiment}-seed{seed}"),
            logged.get("group") or experiment)


def evaluation_name(run: ProtocolRun, training_name: str) -> str:
    """``<training run>-<mode>`` (``-transfer-<tuning set>`` in transfer mode)."""
    mode = f"transfer-{run.result.plan.tune_on}" if run.mode == "transfer" else run.mode
    return f"{training_name}-{mode}"


def evaluation_config(run: ProtocolRun, training: Mapping[str, Any]) -> dict[str, Any]:
    """The run's config for the logger: every option as resolved (grids, methods, image counts, ...), the
    checkpoint (path, SHA-256, backbone, data set), the training run it came from, the image spec, the split sizes,
    each method's grid and each set's chosen parameters (``selections``: set -> method -> parameters)."""
    config = run.config
    resolved = {f.name: asdict(value) if is_dataclass(value := getattr(config, f.name)) else value
                for f in fields(config)}
    resolved["ood"]["sets"] = list(run.result.test_scores)  # the sets evaluated (none given: the data set's suite)
    data = config.data
    resolved["data"] = f"{type(data).__module__}.{type(data).__qualname__}" if data is not None else None
    for key in ("ckpt", "weights"):
        resolved[key] = str(Path(resolved[key]).resolve()) if resolved[key] else None
    logged = training.get("logger") or {}
    selections: dict[str, dict[str, Any]] = {}
    for method, by_set in run.result.selections.items():
        for name, selection in by_set.items():
            selections.setdefault(name, {})[method] = dict(selection.params)
    return {**resolved,
            "checkpoint": {"path": str(config.weights_file.resolve()), "sha256": run.weights_sha256,
                           "backbone": run.backbone, "dataset": run.spec.dataset},
            "training_run": {"experiment": training.get("experiment"), "seed": training.get("seed"),
                             "id": logged.get("id"), "name": logged.get("name"), "group": logged.get("group"),
                             "project": logged.get("project")},
            "image_spec": run.spec.to_dict(),
            "splits": {name: {"n_tune": len(split.tune), "n_test": len(split.test)}
                       for name, split in run.result.splits.items()},
            "grids": run.meta["grids"], "selections": selections}


def log_run(out: Path, run: ProtocolRun, files: RunFiles, analyses: Mapping[str, AnalysisOutput]) -> str:
    """Log the run to W&B (offline without network) or CSV under ``out``; returns where it went (one line)."""
    config = run.config
    training = training_record(config.ckpt) if config.ckpt else {}
    training_name, group = training_names(run, training)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        logger = build_logger(config.logger, out, name=evaluation_name(run, training_name), group=group,
                              job_type="evaluate")
    hyperparameters = evaluation_config(run, training)
    wandb_experiment = wandb_run(logger)
    if wandb_experiment is not None:
        name = artifact_name("model", (training.get("logger") or {}).get("id") or training_name)
        hyperparameters["checkpoint"]["artifact"] = link_checkpoint(
            wandb_experiment, config.weights_file, name, run.weights_sha256,
            {"experiment": training.get("experiment"), "seed": training.get("seed")}, log=config.logger.log_model)
    logger.log_hyperparams(hyperparameters)
    logger.log_metrics(run_metrics(run, analyses))
    if wandb_experiment is not None:
        _log_wandb_media(logger, run, files.figures, analyses)
        saved = [out / SAVED_CONFIG] if (out / SAVED_CONFIG).is_file() else []
        log_results(wandb_experiment, {**{p.name: p for p in [*files.results, *saved]},
                                       **{f"detectors/{p.name}": p for p in files.detectors}})
    logger.finalize("success")
    where = describe_logger(logger)
    finish_logger(logger)
    return where


def _log_wandb_media(logger: WandbLogger, run: ProtocolRun, figures: list[Path],
                     analyses: Mapping[str, AnalysisOutput]) -> None:
    """The results table, the figures, the analyses (figure, and the numbers as a run file) and ROC line plots."""
    import wandb

    records = [record.to_dict() for record in run.result.records]
    columns = [k for k in dict.fromkeys(k for r in records for k in r) if k != "grid_edge"]
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


