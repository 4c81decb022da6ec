"""Training checkpoints: written atomically, the state of the run that wrote them, and what evaluation rebuilds
from them (the model and its in-distribution DataModule)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable

from odin_pl.archives import load_torch_file
from odin_pl.safe_names import datamodule_class
from odin_pl.training.module import ImageClassifier
from odin_pl.errors import MissingFileError, UserError, did_you_mean

RUN_KEY = "run"  # checkpoint["odin_pl"]["run"]: {"finished": bool, "epochs": int} of the run that wrote it
# checkpoint["odin_pl"]["training"]: {"experiment": str, "seed": int | None, "logger": run identity or None} (see
# callbacks.TrainingRun and odin_pl.tracking.loggers.run_identity)
TRAINING_KEY = "training"


def run_progress(path: str | Path) -> tuple[bool, int]:
    """(whether the run that wrote the checkpoint ``path`` finished, the epochs it completed). The archive's
    checksums are verified; only the pickled header is loaded (tensors are memory-mapped). Checkpoints that do not
    say are counted as finished: train.py wrote them at the end of training only."""
    checkpoint = load_torch_file(path, "checkpoint", mmap=True)
    run = (checkpoint.get("odin_pl") or {}).get(RUN_KEY) or {"finished": True, "epochs": checkpoint.get("epoch", 0)}
    return bool(run["finished"]), int(run["epochs"])


def training_record(path: str | Path) -> dict[str, Any]:
    """What the checkpoint ``path`` says of the training run that wrote it (experiment, seed and logger run; see
    :data:`TRAINING_KEY`); {} for checkpoints that do not say. The archive's checksums are verified; only the
    pickled header is loaded."""
    checkpoint = load_torch_file(path, "checkpoint", mmap=True)
    return dict((checkpoint.get("odin_pl") or {}).get(TRAINING_KEY) or {})


def read_checkpoint(path: str | Path, trust_pickle: bool = False) -> dict[str, Any]:
    """The checkpoint dict, with clear errors (:func:`odin_pl.archives.load_torch_file`: every member's CRC-32
    checked; tensors and plain data only unless ``trust_pickle``)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint {path} does not exist; train one with `python train.py` "
                               "(it prints the path) or pass the right --ckpt")
    checkpoint = load_torch_file(path, "checkpoint", trust_pickle,
                                 hint=". Is it a checkpoint written by train.py (a Lightning .ckpt)?")
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise UserError(f"{path} is not a Lightning checkpoint of odin-pl (no state_dict / hyper_parameters); for "
                        "a plain state_dict give --model NAME --weights FILE --data DATAMODULE (or --dataset NAME) "
                        "instead of --ckpt")
    if not checkpoint["hyper_parameters"].get("image_spec"):
        raise UserError(f"{path} records no image spec; it was not written by odin_pl.ImageClassifier")
    return checkpoint


def _check_arguments(target: Callable, arguments: dict[str, Any], what: str) -> None:
    """Refuse ``arguments`` that ``target`` does not take (naming them and the closest valid name), unless it
    takes ``**kwargs``."""
    parameters = inspect.signature(target).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = [name for name in arguments if name not in parameters]
    if unknown:
        hints = "".join(did_you_mean(name, parameters) for name in unknown)
        raise UserError(f"{what} has argument(s) {', '.join(map(repr, unknown))} that it does not take{hints}; was "
                        "it written by another version of the code?")


def load_model(checkpoint: dict[str, Any], path: str | Path = "") -> ImageClassifier:
    """An eval-mode ImageClassifier with the checkpoint's weights; a clear error if the architecture differs."""
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
    _check_arguments(ImageClassifier, hparams, f"the model in {path or 'the checkpoint'} (ImageClassifier)")
    model = ImageClassifier(**hparams)
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        raise UserError(f"the weights in {path or 'the checkpoint'} do not fit backbone {hparams['backbone']!r} "
                        f"with {hparams.get('num_classes')} classes: {str(err).splitlines()[0]} ...") from err
    return model.eval()


def build_datamodule(checkpoint: dict[str, Any], path: str | Path = "", trust: bool = False,
                     **overrides: Any) -> Any:
    """The DataModule the model was trained on, rebuilt from the checkpoint's class path (a class of the
    project's ``datamodules`` unless ``trust``: :func:`odin_pl.safe_names.datamodule_class`) and init args."""
    source = str(path or "the checkpoint")
    class_path = (checkpoint.get("odin_pl") or {}).get("datamodule_class")
    init_args = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    if not class_path:
        raise UserError("the checkpoint does not record its DataModule; it was saved without a trainer "
                        "DataModule, so evaluate.py cannot rebuild the in-distribution data")
    cls = datamodule_class(class_path, source, trust)
    init_args = {k: v for k, v in init_args.items() if not k.startswith("_")}
    init_args.update({k: v for k, v in overrides.items() if v is not None})
    what = f"the DataModule {class_path} of {source}"
    _check_arguments(cls, init_args, what)
    try:
        return cls(**init_args)
    except UserError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError) as err:
        raise UserError(f"{what} cannot be built from its recorded arguments: {err.__class__.__name__}: {err}; "
                        "give the DataModule with --data CLASS --data.init_args.NAME VALUE instead") from err
