"""Log a protocol run to the experiment logger as an evaluation run: named after the checkpoint's training run and
what the evaluation chose (mode, methods, sets, the user's tag, a fingerprint of the rest), in the training run's
group, with the resolved configuration (each set's chosen parameters included), the metrics as the run's summary and
one table per set and method (W&B; CSV: one row), the results table, figures, ROC curves, analyses, the result files
as an artifact and the evaluated checkpoint as its input artifact. The run's identity is kept in the output folder
(``logger.json``), so that ``evaluate.py bootstrap`` updates the same run."""

from __future__ import annotations

import hashlib
import json
import os
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
from odin_pl.files import atomic_write
from odin_pl.tracking.loggers import (LoggerOptions, build_logger, describe_logger, finish_logger, run_identity,
                                      wandb_run)
from odin_pl.protocol.bootstrap import INTERVAL_FIELDS
from odin_pl.protocol.openood import PREFIX as OPENOOD_PREFIX, OpenOODResult
from odin_pl.metrics import METRIC_NAMES
from odin_pl.report.plots import roc_points
from odin_pl.evaluation.options import SAVED_CONFIG
from odin_pl.evaluation.outputs import RunFiles

FIGURE_KINDS = ("roc", "scores", "grid")  # one W&B panel per kind: images of one size
ROC_POINTS = 500  # points per logged ROC curve
METRIC_PREFIX = "eval/ood"  # the training callback's keys are ood/...: grouped charts must not average the two
LOGGER_RECORD = "logger.json"  # the evaluation's logger run (run_identity) in its output folder
NAMED_SETS = 3  # a run name lists up to this many OOD sets, else their number


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


def evaluation_name(run: ProtocolRun, training_name: str, hyperparameters: Mapping[str, Any]) -> str:
    """``<training run>-<mode>-<methods>-<sets>[-<tag>]-<fingerprint>``: ``transfer-<tuning set>`` in transfer mode,
    the methods and sets joined by '+' (``<n>sets`` beyond three), and the first 6 hex digits of the SHA-256 of the
    logged configuration, so that evaluations that differ in anything else (grids, seeds, image counts, weights)
    get different names."""
    mode = f"transfer-{run.result.plan.tune_on}" if run.mode == "transfer" else run.mode
    sets = list(run.result.test_scores)
    named = "+".join(sets) if len(sets) <= NAMED_SETS else f"{len(sets)}sets"
    fingerprint = hashlib.sha256(json.dumps(hyperparameters, sort_keys=True, default=str).encode()).hexdigest()[:6]
    methods = "+".join(grid.method.name for grid in run.result.plan.methods)
    return f"{run.config.logger.default_name(training_name, mode, methods, named)}-{fingerprint}"


def log_metrics(logger: Any, metrics: Mapping[str, float], run: ProtocolRun | None = None) -> None:
    """W&B: ``metrics`` as the run's summary (no history of one-step charts) and, with ``run``, one table
    ``eval/ood/<set>/<method>`` per set and method (a row per metric: value and bootstrap interval); another logger
    (CSV): one row of ``metrics``."""
    experiment = wandb_run(logger)
    if experiment is None:
        logger.log_metrics(dict(metrics))
        return
    experiment.summary.update(dict(metrics))
    if run is None:
        return
    import wandb

    tables = {}
    for name, records in run.result.main_records().items():
        for method, record in records.items():
            rows = [[metric, record.metrics[metric], *(record.intervals.get(f"{metric}_{f}") for f in INTERVAL_FIELDS)]
                    for metric in METRIC_NAMES if metric in record.metrics]
            tables[f"{METRIC_PREFIX}/{name}/{method}"] = wandb.Table(columns=["metric", "value", *INTERVAL_FIELDS],
                                                                     data=rows)
    experiment.log(tables)


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
    hyperparameters = evaluation_config(run, training)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        logger = build_logger(config.logger, out, name=evaluation_name(run, training_name, hyperparameters),
                              group=group, job_type="evaluate")
    wandb_experiment = wandb_run(logger)
    if wandb_experiment is not None:
        name = artifact_name("model", (training.get("logger") or {}).get("id") or training_name)
        hyperparameters["checkpoint"]["artifact"] = link_checkpoint(
            wandb_experiment, config.weights_file, name, run.weights_sha256,
            {"experiment": training.get("experiment"), "seed": training.get("seed")}, log=config.logger.log_model)
    logger.log_hyperparams(hyperparameters)
    log_metrics(logger, run_metrics(run, analyses), run)
    if wandb_experiment is not None:
        with atomic_write(out / LOGGER_RECORD) as handle:
            json.dump(run_identity(logger), handle)
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


def update_run(out: Path, run: ProtocolRun) -> str:
    """``evaluate.py bootstrap``: the evaluation's W&B run (its ``logger.json``) continued with the metrics again
    (summary and tables, intervals included); returns where it went, or "" when the evaluation logged no W&B run."""
    record = out / LOGGER_RECORD
    identity = json.loads(record.read_text()) if record.is_file() else None
    if not identity or identity.get("backend") != "wandb" or os.environ.get("WANDB_MODE", "").lower() == "disabled":
        return ""
    logger = build_logger(run.config.logger, out, name=identity["name"], group=identity["group"],
                          job_type="evaluate", run_id=identity["id"])
    log_metrics(logger, run_metrics(run, {}), run)
    where = describe_logger(logger)
    finish_logger(logger)
    return where


def log_aggregate(output: Path, aggregate: Mapping[str, Any], options: LoggerOptions) -> str:
    """``evaluate.py aggregate``: a run of job type ``aggregate`` (named after the runs' folders and their number)
    with the aggregated folders in its config, every ``<metric>_mean``/``_std`` in its summary
    (``aggregate/<set>/<method>[/<tuning set>]/...``) and the rows as a table; returns where it went."""
    names = [Path(run_dir).resolve() for run_dir in aggregate["runs"]]
    common = Path(os.path.commonpath(names)).name if len(names) > 1 else names[0].name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        logger = build_logger(options, output, name=options.default_name("aggregate", common,
                                                                         f"{aggregate['n_runs']}runs"),
                              group=None, job_type="aggregate")
    logger.log_hyperparams({"runs": [str(p) for p in names], "n_runs": aggregate["n_runs"],
                            "statistic": aggregate["statistic"]})
    summary = {}
    for row in aggregate["rows"]:
        tuned = "" if row["tuned_on"] in (None, row["ood"]) else f"/{row['tuned_on']}"
        summary.update({f"aggregate/{row['ood']}/{row['method']}{tuned}/{key}": value for key, value in row.items()
                        if key.endswith(("_mean", "_std"))})
    log_metrics(logger, summary)
    if (experiment := wandb_run(logger)) is not None:
        import wandb

        columns = list(dict.fromkeys(k for row in aggregate["rows"] for k in row))
        experiment.log({"aggregate": wandb.Table(columns=columns,
                                                 data=[[row.get(c) for c in columns] for row in aggregate["rows"]])})
    logger.finalize("success")
    where = describe_logger(logger)
    finish_logger(logger)
    return where
