"""Training checkpoints: written atomically, the state of the run that wrote them, and what evaluation rebuilds
from them (the model and its in-distribution DataModule)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from odin_pl.training.module import ImageClassifier
from odin_pl.errors import MissingFileError, UserError

RUN_KEY = "run"  # checkpoint["odin_pl"]["run"]: {"finished": bool, "epochs": int} of the run that wrote it
# checkpoint["odin_pl"]["training"]: {"experiment": str, "seed": int | None, "logger": run identity or None} (see
# callbacks.TrainingRun and odin_pl.tracking.loggers.run_identity)
TRAINING_KEY = "training"


def run_progress(path: str | Path) -> tuple[bool, int]:
    """(whether the run that wrote the checkpoint ``path`` finished, the epochs it completed). Only the pickled
    header is read (tensors are memory-mapped). Checkpoints that do not say are counted as finished: train.py
    wrote them at the end of training only."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    run = (checkpoint.get("odin_pl") or {}).get(RUN_KEY) or {"finished": True, "epochs": checkpoint.get("epoch", 0)}
    return bool(run["finished"]), int(run["epochs"])


def training_record(path: str | Path) -> dict[str, Any]:
    """What the checkpoint ``path`` says of the training run that wrote it (experiment, seed and logger run; see
    :data:`TRAINING_KEY`); {} for checkpoints that do not say. Only the pickled header is read."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return dict((checkpoint.get("odin_pl") or {}).get(TRAINING_KEY) or {})


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict (tensors and plain data only: ``weights_only=True``), with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint {path} does not exist; train one with `python train.py` "
                               "(it prints the path) or pass the right --ckpt")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a corrupt or foreign file
        raise UserError(f"cannot read checkpoint {path}: {err.__class__.__name__}: {err}. Is it a checkpoint "
                        "written by train.py (a Lightning .ckpt)?") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise UserError(f"{path} is not a Lightning checkpoint of odin-pl (no state_dict / hyper_parameters); for "
                        "a plain state_dict give --model NAME --weights FILE --data DATAMODULE (or --dataset NAME) "
                        "instead of --ckpt")
    if not checkpoint["hyper_parameters"].get("image_spec"):
        raise UserError(f"{path} records no image spec; it was not written by odin_pl.ImageClassifier")
    return checkpoint


def load_model(checkpoint: dict[str, Any], path: str | Path = "") -> ImageClassifier:
    """An eval-mode ImageClassifier with the checkpoint's weights; a clear error if the architecture differs."""
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
    model = ImageClassifier(**hparams)
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        raise UserError(f"the weights in {path or 'the checkpoint'} do not fit backbone {hparams['backbone']!r} "
                        f"with {hparams.get('num_classes')} classes: {str(err).splitlines()[0]} ...") from err
    return model.eval()


def build_datamodule(checkpoint: dict[str, Any], **overrides: Any) -> Any:
    """The DataModule the model was trained on, rebuilt from the checkpoint's class path and init args."""
    class_path = (checkpoint.get("odin_pl") or {}).get("datamodule_class")
    init_args = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    if not class_path:
        raise UserError("the checkpoint does not record its DataModule; it was saved without a trainer "
                        "DataModule, so evaluate.py cannot rebuild the in-distribution data")
    module_name, _, class_name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    init_args = {k: v for k, v in init_args.items() if not k.startswith("_")}
    init_args.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**init_args)
