"""Evaluate a checkpoint with the paper's protocol: ``python evaluate.py --ckpt PATH``.

Per OOD set it tunes (T, epsilon) on held-out images over the paper's grid and reports MSP (baseline) and ODIN
on the remaining ones (``--tune_on NAME|noise``: tune once and transfer; ``--temperature T --epsilon E``: no
tuning). Writes table.md, results.json, results.csv and per-image scores to --output_dir and logs to W&B.
"""

from __future__ import annotations

import inspect
import json
import warnings
from pathlib import Path

import torch
from jsonargparse import auto_cli
from lightning.pytorch.loggers import WandbLogger
from torch.utils.data import ConcatDataset

from datamodules.ood import NoiseDataset, build_ood_dataset, ood_set_name
from odin_pl import __version__
from odin_pl.checkpoint import build_datamodule, load_model, read_checkpoint
from odin_pl.distributed import free_port, init_process_group, world
from odin_pl.loggers import default_logger, describe_logger
from odin_pl.plots import plot_grid, plot_histograms, plot_roc, roc_points
from odin_pl.protocol import ProtocolResult, run_protocol
from odin_pl.report import cross_table, markdown_table, write_results
from odin_pl.tuning import PAPER_EPSILONS, PAPER_TEMPERATURES, PAPER_TUNING_SIZE, Grid, parse_floats

NOISE_TUNING_IMAGES = 500  # per noise kind, for --tune_on noise
NOISE_TUNING_SEED_OFFSET = 1  # noise tuning images use a seed apart from the noise test sets


def default_output_dir(ckpt: Path) -> Path:
    parent = ckpt.resolve().parent
    return (parent.parent if parent.name == "checkpoints" else parent) / "evaluation"


def _split_names(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def evaluate(
    ckpt: str,
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
) -> ProtocolResult | None:
    """Run the OOD evaluation protocol on a checkpoint.

    Args:
        ckpt: checkpoint written by train.py.
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

    Returns the result in a single process; with ``devices > 1`` the results are in the output files.
    """
    if (temperature is None) != (epsilon is None):
        raise ValueError("fixed parameters need both --temperature and --epsilon (or neither, to tune)")
    if temperature is not None and tune_on is not None:
        raise ValueError("--tune_on tunes the parameters; it cannot be combined with fixed --temperature/--epsilon")
    if devices < 1:
        raise ValueError(f"devices must be >= 1, got {devices}")
    ckpt_path = Path(ckpt)
    checkpoint = read_checkpoint(ckpt_path)
    if devices > 1 and world()[1] == 1:
        options = {k: v for k, v in locals().items() if k in inspect.signature(evaluate).parameters}
        torch.multiprocessing.spawn(_process, args=(devices, free_port(), options), nprocs=devices)
        return None
    rank, _ = world()
    model = load_model(checkpoint, ckpt_path)
    datamodule = build_datamodule(checkpoint, data_root=data_root)
    spec = model.image_spec
    if device == "auto":
        device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    model.to(device=device, dtype=torch.float64 if float64 else None)
    datamodule.setup("test")

    names = _split_names(ood) or list(datamodule.default_ood_sets)
    ood_sets, skipped = {}, []
    for name in names:
        try:
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

    out = Path(output_dir) if output_dir else default_output_dir(ckpt_path)
    scores_dir = out / "scores"
    scores_dir.mkdir(parents=True, exist_ok=True)

    def save_scores(name: str, split: str, settings, scores: torch.Tensor) -> None:
        if rank == 0:
            torch.save({"settings": list(settings), "scores": scores}, scores_dir / f"{name}__{split}.pt")

    result = run_protocol(model, datamodule.test_set, ood_sets, input_std=spec.std, mode=mode, grid=grid,
                          tune_on=None if mode == "cross" else tune_on, tuning_only_datasets=tuning_only, temperature=temperature,
                          epsilon=epsilon, n_tune=n_tune, seed=seed, batch_size=batch_size,
                          num_workers=num_workers, device=device, on_scores=save_scores, progress=rank == 0)
    if rank > 0:
        return result

    title = f"{spec.dataset or 'in-distribution'}, {checkpoint['hyper_parameters']['backbone']} ({mode} mode)"
    table = markdown_table(result.records, title)
    if mode == "cross":
        table += "\n\n" + cross_table(result.records)
    meta = {"checkpoint": str(ckpt_path), "version": __version__, "mode": mode, "tune_on": tune_on,
            "seed": seed, "image_spec": spec.to_dict(), "skipped_ood_sets": skipped, "notes": result.notes,
            "grid": {"temperatures": grid.temperatures, "epsilons": grid.epsilons},
            "tuning": {name: {"temperature": s.temperature, "epsilon": s.epsilon, "tuning_fpr_at_95_tpr":
                              s.tuning_fpr, "fpr_at_95_tpr_grid": s.fpr_grid, "grid_edge": s.edge_note}
                       for name, s in result.selections.items()},
            "splits": result.splits}
    paths = write_results(out, result.records, meta, table)
    figures = _plot(out / "figures", result, meta)
    print(table)
    for note in result.notes:
        print(f"Note: {note}")
    print(f"Results: {', '.join(str(p) for p in paths)}; figures in {out / 'figures'}")
    if logger:
        _log(out, result, title, meta, figures)
    return result


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


def _log(out: Path, result: ProtocolResult, title: str, meta: dict, figures: list[Path]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        run_logger = default_logger(out, name="evaluate")
    metrics = {f"ood/{r['ood']}/{r['method']}/{k}": v for r in result.records for k, v in r.items()
               if isinstance(v, float)}
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


if __name__ == "__main__":
    auto_cli(evaluate, as_positional=False)
