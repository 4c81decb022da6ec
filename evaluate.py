"""Evaluate a checkpoint with the paper's protocol: ``python evaluate.py --ckpt PATH``.

Per OOD set it tunes (T, epsilon) on held-out images over the paper's grid and reports MSP (baseline) and ODIN
on the remaining ones (``--tune_on NAME|noise``: tune once and transfer; ``--temperature T --epsilon E``: no
tuning). Writes table.md, results.json, results.csv and per-image scores to --output_dir and logs to W&B.

Also written: ``detectors/<set>.json`` per tuning (``noise.json`` for ``--tune_on noise``, ``fixed.json`` for fixed
parameters), an :class:`odin_pl.ODINDetector` whose threshold keeps 95% of the in-distribution TEST split at that
(T, epsilon), so that its flags reproduce the reported FPR at 95% TPR on the test splits.

Other models: ``--model NAME --weights FILE --dataset NAME`` (instead of ``--ckpt``) evaluates a plain state_dict of
any model registered in timm or by odin_pl for an in-distribution set (cifar10, cifar100, cifar80, mnist, digits);
whole pickled models, such as the ODIN release's ``densenet10.pth``, need ``--trust_pickle true`` (see odin_pl.convert).

Resume: scores are saved per set and split as soon as they are computed; ``--resume true`` reuses those made with the
same weights, data, split and settings instead of scoring again, and gives the results of an uninterrupted run.

Predict: ``--predict FOLDER_OR_SET --detector FILE`` scores every image with a saved detector instead of running
the protocol and writes ``<output_dir>/predictions/<set>.csv`` (index, path, predicted_class, class_name, msp,
odin, is_ood; input order), through Lightning's predict loop on ``--devices`` processes, each image once.
"""

from __future__ import annotations

import inspect
import json
import shutil
import warnings
from pathlib import Path

import torch
from jsonargparse import auto_cli
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import WandbLogger
from torch.utils.data import ConcatDataset

from callbacks.prediction_writer import DetectionCSVWriter
from datamodules.base import ImageDataModule
from datamodules.image_folder import ImageFolderDataset
from datamodules.in_distribution import in_distribution_datamodule
from datamodules.ood import NoiseDataset, build_ood_dataset, ood_set_name
from odin_pl import __version__
from odin_pl.analyses import AnalysisContext, parse_analyses, run_analyses, scalar_metrics
from odin_pl.checkpoint import build_datamodule, load_model, read_checkpoint
from odin_pl.convert import load_foreign_model
from odin_pl.detector import ODINDetector
from odin_pl.distributed import free_port, init_process_group, world
from odin_pl.loggers import default_logger, describe_logger
from odin_pl.module import ImageClassifier
from odin_pl.plots import plot_grid, plot_histograms, plot_roc, roc_points
from odin_pl.prediction import DetectorModule
from odin_pl.protocol import ProtocolResult, run_protocol
from odin_pl.report import cross_table, markdown_table, write_results
from odin_pl.score_store import ScoreStore, file_sha256
from odin_pl.tuning import PAPER_EPSILONS, PAPER_TEMPERATURES, PAPER_TUNING_SIZE, Grid, parse_floats

NOISE_TUNING_IMAGES = 500  # per noise kind, for --tune_on noise
NOISE_TUNING_SEED_OFFSET = 1  # noise tuning images use a seed apart from the noise test sets


def default_output_dir(ckpt: Path) -> Path:
    parent = ckpt.resolve().parent
    return (parent.parent if parent.name == "checkpoints" else parent) / "evaluation"


def _split_names(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def evaluate(
    ckpt: str | None = None,
    model: str | None = None,
    weights: str | None = None,
    dataset: str | None = None,
    trust_pickle: bool = False,
    predict: str | None = None,
    detector: str | None = None,
    resume: bool = False,
    output_dir: str | None = None,
    ood: str | None = None,
    data_root: str | None = None,
    temperature: float | None = None,
    epsilon: float | None = None,
    tune_on: str | None = None,
    temperatures: str | None = None,
    epsilons: str | None = None,
    n_tune: int = PAPER_TUNING_SIZE,
    seed: int = 0,
    num_ood_images: int | None = None,
    download: bool = False,
    batch_size: int = 256,
    num_workers: int = 0,
    device: str = "auto",
    devices: int = 1,
    float64: bool = False,
    logger: bool = True,
    analyses: str | None = None,
    analysis_images: int = 1000,
) -> ProtocolResult | Path | None:
    """Run the OOD evaluation protocol on a checkpoint (or score images with a saved detector: ``predict``).

    Args:
        ckpt: checkpoint written by train.py.
        model: instead of ``ckpt``: a model name registered in timm or by odin_pl (with ``weights``, ``dataset``).
        weights: the model's state_dict file (read with ``weights_only=True``).
        dataset: the in-distribution data set of ``model``: cifar10, cifar100, cifar80, mnist or digits.
        trust_pickle: allow ``weights`` to be a whole pickled model (unpickling runs code from the file).
        predict: score the images of this folder or named set with ``detector`` and write a CSV, no protocol.
        detector: a detector file written by evaluate.py (``<output_dir>/detectors/<set>.json``).
        resume: reuse the saved per-image scores of an interrupted run in ``output_dir`` (same weights, data,
            splits and settings) instead of scoring them again.
        output_dir: where results go (default: the run folder's ``evaluation/``).
        ood: comma-separated OOD set names or image folders (default: the paper's suite for the data set).
        data_root: root folder of the data sets (default: $ODIN_PL_DATA, else ./data).
        temperature: with ``epsilon``: fixed parameters, no tuning.
        epsilon: perturbation magnitude for the fixed mode.
        tune_on: tune once on this OOD set (or ``noise``: 500 Gaussian + 500 Uniform images) and transfer;
            ``all``: tune on every set and report every set with every tuning (the paper's tables 10 and 11).
        temperatures: comma-separated tuning grid of T (default: the paper's 1, 2, 5, ..., 1000).
        epsilons: comma-separated tuning grid of epsilon (default: 21 values from 0 to 0.004).
        n_tune: tuning images per set (the paper: 1000; half of a set smaller than twice this).
        seed: seed of the tuning/test splits.
        num_ood_images: use only this many images of each OOD set (default: all; a seeded subset).
        download: download missing OOD sets (the paper's released archives; md5-checked).
        batch_size: images per scoring batch.
        num_workers: DataLoader workers.
        device: ``auto``, ``cpu`` or ``cuda``.
        devices: number of processes (one GPU each when there are enough GPUs, else CPU processes); each scores
            its own shard of every set, no image twice, and the metrics equal a single process's.
        float64: score in double precision (slower; for exact comparisons).
        logger: log to W&B (offline without network) or CSV.
        analyses: comma-separated paper analyses, or ``all``: sweeps, logit-stats, gradient-norms, distances,
            threshold, tuning-size, accuracy, taylor; each writes a PNG and its numbers (JSON) to
            ``<output_dir>/analyses/`` and to the logger.
        analysis_images: images per set for the per-image analyses and the distance samples.

    Returns the result in a single process (the CSV's path with ``predict``); with ``devices > 1`` the results
    are in the output files.
    """
    if (temperature is None) != (epsilon is None):
        raise ValueError("fixed parameters need both --temperature and --epsilon (or neither, to tune)")
    if temperature is not None and tune_on is not None:
        raise ValueError("--tune_on tunes the parameters; it cannot be combined with fixed --temperature/--epsilon")
    if devices < 1:
        raise ValueError(f"devices must be >= 1, got {devices}")
    analysis_names = parse_analyses(analyses)
    if analysis_names and devices > 1:
        raise ValueError("--analyses runs in a single process: use it with --devices 1")
    classifier, datamodule, source = _load(ckpt, model, weights, dataset, trust_pickle, data_root)
    out = Path(output_dir) if output_dir else default_output_dir(source)
    if predict is not None:
        return _predict(classifier, predict, detector, out, datamodule.data_root, seed, num_ood_images, batch_size,
                        num_workers, device, devices, float64)
    if devices > 1 and world()[1] == 1:
        options = {k: v for k, v in locals().items() if k in inspect.signature(evaluate).parameters}
        torch.multiprocessing.spawn(_process, args=(devices, free_port(), options), nprocs=devices)
        return None
    rank, _ = world()
    spec = classifier.image_spec
    if device == "auto":
        device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    classifier.to(device=device, dtype=torch.float64 if float64 else None)
    datamodule.setup("test")

    names = _split_names(ood) or list(datamodule.default_ood_sets)
    ood_sets, sources, skipped = {}, {}, []
    for name in names:
        try:
            sources[ood_set_name(name)] = name
            ood_sets[ood_set_name(name)] = build_ood_dataset(name, spec, datamodule.data_root, seed,
                                                             num_ood_images, download=download)
        except FileNotFoundError as err:
            if ood:  # asked for by name: the user must fix it
                raise
            skipped.append(name)
            if rank == 0:
                print(f"Skipping OOD set {name!r}: not available ({err})")
    if not ood_sets:
        raise ValueError(f"none of the OOD sets {names} is available; see the messages above")

    tuning_only = {}
    if tune_on == "noise":
        noise_seed = seed + NOISE_TUNING_SEED_OFFSET
        tuning_only["noise"] = ConcatDataset([NoiseDataset(kind, spec, NOISE_TUNING_IMAGES, noise_seed)
                                              for kind in ("gaussian", "uniform")])
    mode = "fixed" if temperature is not None else "cross" if tune_on == "all" else "transfer" if tune_on else "paper"
    grid = Grid(parse_floats(temperatures, "--temperatures") if temperatures else PAPER_TEMPERATURES,
                parse_floats(epsilons, "--epsilons") if epsilons else PAPER_EPSILONS)

    store = ScoreStore(out / "scores", {"weights_sha256": file_sha256(source), "float64": float64, "seed": seed,
                                        "n_tune": n_tune, "num_ood_images": num_ood_images},
                       {name: {"source": sources.get(name, spec.dataset), "n": len(ds)} for name, ds in
                        [("in_distribution", datamodule.test_set), *ood_sets.items(), *tuning_only.items()]})
    result = run_protocol(classifier, datamodule.test_set, ood_sets, input_std=spec.std, mode=mode, grid=grid,
                          tune_on=None if mode == "cross" else tune_on, tuning_only_datasets=tuning_only, temperature=temperature,
                          epsilon=epsilon, n_tune=n_tune, seed=seed, batch_size=batch_size,
                          num_workers=num_workers, device=device, on_scores=store.save if rank == 0 else None,
                          load_scores=store.load if resume else None, progress=rank == 0)
    if rank > 0:
        return result

    title = f"{spec.dataset or 'in-distribution'}, {classifier.hparams.backbone} ({mode} mode)"
    table = markdown_table(result.records, title)
    if mode == "cross":
        table += "\n\n" + cross_table(result.records)
    meta = {"checkpoint": str(source), "version": __version__, "mode": mode, "tune_on": tune_on,
            "seed": seed, "image_spec": spec.to_dict(), "skipped_ood_sets": skipped, "notes": result.notes,
            "grid": {"temperatures": grid.temperatures, "epsilons": grid.epsilons},
            "tuning": {name: {"temperature": s.temperature, "epsilon": s.epsilon, "tuning_fpr_at_95_tpr":
                              s.tuning_fpr, "fpr_at_95_tpr_grid": s.fpr_grid, "grid_edge": s.edge_note}
                       for name, s in result.selections.items()},
            "splits": result.splits}
    paths = write_results(out, result.records, meta, table)
    figures = _plot(out / "figures", result, meta)
    fixed = None if temperature is None else (float(temperature), float(epsilon))
    detectors = _write_detectors(out / "detectors", classifier, result, fixed, {
        "checkpoint": str(source), "weights_sha256": store.context["weights_sha256"], "in_distribution": spec.dataset,
        "mode": mode, "seed": seed, "n_tune": n_tune, "threshold_split": "in_distribution/test"})
    print(table)
    for note in result.notes:
        print(f"Note: {note}")
    if store.reused:
        print(f"Resumed: reused {len(store.reused)} saved score file(s): {', '.join(store.reused)}")
    print(f"Results: {', '.join(str(p) for p in paths)}; figures in {out / 'figures'}; detectors: "
          f"{', '.join(str(p) for p in detectors)}")
    analysis_files = run_analyses(analysis_names, AnalysisContext(
        model=classifier, input_mean=spec.mean, input_std=spec.std, in_dataset=datamodule.test_set,
        ood_datasets=ood_sets, result=result, grid=grid, output_dir=out / "analyses", seed=seed,
        batch_size=batch_size, device=device, num_images=analysis_images, class_names=spec.class_names))
    if analysis_files:
        print(f"Analyses ({', '.join(analysis_files)}): {out / 'analyses'}")
    if logger:
        _log(out, result, title, meta, figures, analysis_files)
    return result


def _load(ckpt: str | None, model: str | None, weights: str | None, dataset: str | None, trust_pickle: bool,
          data_root: str | None) -> tuple[ImageClassifier, ImageDataModule, Path]:
    """The eval-mode model, its in-distribution DataModule and the file of its weights, from ``--ckpt`` or from
    ``--model --weights --dataset``."""
    foreign = (model, weights, dataset)
    if not ((ckpt is not None and foreign == (None, None, None)) or (ckpt is None and None not in foreign)):
        raise ValueError("give either --ckpt PATH (a checkpoint of train.py) or all of --model NAME --weights FILE "
                         "--dataset NAME (a state_dict of another model)")
    if ckpt is not None:
        checkpoint = read_checkpoint(ckpt)
        return load_model(checkpoint, ckpt), build_datamodule(checkpoint, data_root=data_root), Path(ckpt)
    datamodule = in_distribution_datamodule(dataset, data_root=data_root)
    return load_foreign_model(model, weights, datamodule.image_spec, trust_pickle), datamodule, Path(weights)


def _write_detectors(folder: Path, model: ImageClassifier, result: ProtocolResult, fixed: tuple[float, float] | None,
                     info: dict) -> list[Path]:
    """One detector per tuning (or for the fixed parameters), its threshold at 95% TPR on the in-distribution
    test split; ``info`` goes into each file's ``tuned_on``."""
    settings = {name: (s.temperature, s.epsilon) for name, s in result.selections.items()} or {"fixed": fixed}
    paths = []
    for name, setting in settings.items():
        in_scores = result.in_test_scores[setting]
        tuned_on = {**info, "ood_set": None if name == "fixed" else name, "n_threshold_images": len(in_scores)}
        detector = ODINDetector.fit(model, *setting, model.image_spec, in_scores, tuned_on=tuned_on)
        paths.append(detector.save(folder / f"{name}.json"))
    return paths


def _predict(model: ImageClassifier, images: str, detector: str | None, out: Path, data_root: Path, seed: int,
             num_images: int | None, batch_size: int, num_workers: int, device: str, devices: int,
             float64: bool) -> Path:
    """Score every image of a folder or named set with a saved detector on ``devices`` processes (Lightning's
    predict loop); write ``<out>/predictions/<set>.csv`` in input order and return its path."""
    if detector is None:
        raise ValueError("--predict needs --detector FILE (evaluate.py writes them to <output_dir>/detectors/)")
    odin = ODINDetector.load(detector, model)
    spec = model.image_spec
    dataset = build_ood_dataset(images, spec, data_root, seed, num_images)
    paths = [str(p) for p, _ in dataset.samples] if isinstance(dataset, ImageFolderDataset) else None
    csv_path = out / "predictions" / f"{ood_set_name(images)}.csv"
    accelerator = "gpu" if device.startswith("cuda") else device
    trainer = Trainer(accelerator=accelerator, devices=devices, strategy="ddp_spawn" if devices > 1 else "auto",
                      precision="64-true" if float64 else "32-true", use_distributed_sampler=False, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[DetectionCSVWriter(csv_path, paths, spec.class_names)], default_root_dir=out)
    trainer.predict(DetectorModule(odin, dataset, batch_size, num_workers), return_predictions=False)
    print(f"Predictions for {len(dataset)} images ({ood_set_name(images)}): {csv_path}")
    return csv_path


def _plot(folder: Path, result: ProtocolResult, meta: dict) -> list[Path]:
    """ROC curves and score histograms per OOD set, and the tuning-grid heatmap per tuned set."""
    figures = []
    for name, scores in result.test_scores.items():
        figures.append(plot_roc(scores, f"ROC: {name}", folder / f"roc_{name}.png"))
        figures.append(plot_histograms(scores, name, folder / f"scores_{name}.png"))
    grid = meta["grid"]
    for name, selection in result.selections.items():
        figures.append(plot_grid(selection.fpr_grid, grid["temperatures"], grid["epsilons"],
                                 (selection.temperature, selection.epsilon), f"tuning on {name}",
                                 folder / f"grid_{name}.png"))
    return figures


def _log(out: Path, result: ProtocolResult, title: str, meta: dict, figures: list[Path],
         analysis_files: dict[str, list[Path]]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        run_logger = default_logger(out, name="evaluate")
    metrics = {f"ood/{r['ood']}/{r['method']}/{k}": v for r in result.records for k, v in r.items()
               if isinstance(v, float)}
    for name, (numbers, *_) in analysis_files.items():
        metrics.update(scalar_metrics(json.loads(numbers.read_text()), f"analyses/{name}"))
    run_logger.log_hyperparams({"title": title, "mode": meta["mode"], "seed": meta["seed"],
                                "tune_on": json.dumps(meta["tune_on"])})
    run_logger.log_metrics(metrics)
    if isinstance(run_logger, WandbLogger):
        import wandb

        columns = [k for k in result.records[0] if k not in ("grid_edge",)]
        run_logger.log_table("results", columns=columns, data=[[r.get(c) for c in columns] for r in result.records])
        for kind in ("roc", "scores", "grid"):  # one panel per kind: images of one size
            group = [f for f in figures if f.stem.startswith(f"{kind}_")]
            if group:
                run_logger.log_image(f"figures/{kind}", images=[str(f) for f in group], caption=[f.stem for f in group])
        for name, (numbers, *image) in analysis_files.items():  # the figure, and the numbers in full as a run file
            if image:
                run_logger.log_image(f"analyses/{name}", images=[str(image[0])])
            run_files = Path(run_logger.experiment.dir) / "analyses"  # uploaded with the run
            run_files.mkdir(exist_ok=True)
            shutil.copy(numbers, run_files / numbers.name)
        for name, scores in result.test_scores.items():
            curves = {method: roc_points(*pair) for method, pair in scores.items()}
            xs = [fpr[::max(1, len(fpr) // 500)].tolist() for fpr, _ in curves.values()]
            ys = [tpr[::max(1, len(tpr) // 500)].tolist() for _, tpr in curves.values()]
            run_logger.experiment.log({f"roc/{name}": wandb.plot.line_series(
                xs=xs, ys=ys, keys=list(curves), title=f"ROC {name}", xname="FPR")})
    run_logger.finalize("success")
    if note := describe_logger(run_logger):
        print(note)


def _process(rank: int, world_size: int, port: int, options: dict) -> None:
    """One of ``devices`` evaluation processes."""
    init_process_group(rank, world_size, port)
    try:
        evaluate(**options)
    finally:
        torch.distributed.destroy_process_group()


def main(argv: list[str] | None = None) -> ProtocolResult | Path | None:
    """Parse ``argv`` (default: the command line) and run :func:`evaluate`."""
    return auto_cli(evaluate, as_positional=False, args=argv)


if __name__ == "__main__":
    main()
