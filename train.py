"""Train a classifier: ``python train.py`` (the offline quickstart) or ``python train.py --config FILE ...``.

A LightningCLI (run=False) over ``odin_pl.ImageClassifier`` and any ``datamodules.ImageDataModule``; it fits,
reports test accuracy, then prints the checkpoint path and the ``evaluate.py`` command to run next.
Resume an interrupted run with ``--ckpt_path PATH`` (or ``last``). Several ``--config`` files compose, later ones
overriding earlier ones, on top of ``configs/trainer/default.yaml``, which is always loaded first (see
``configs/README.md``).

Checkpoints are added here rather than in a config: a YAML list such as ``trainer.callbacks`` is replaced, not
merged, by a later config, and whether a "best" checkpoint may be kept depends on the data. Unless the configured
callbacks already hold a ``ModelCheckpoint`` (as the quickstart's do) or ``trainer.enable_checkpointing`` is false,
one is added that writes ``<trainer.default_root_dir>/checkpoints/last.ckpt`` after every epoch and, only when the
DataModule holds out a validation split (``val_split > 0``), ``best.ckpt`` at the highest ``val/acc``; the test
accuracy is then that of ``best.ckpt``, which is the checkpoint printed for evaluation. With ``val_split = 0`` (the
paper's configs) validation runs on the test set, so nothing is selected on it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from datamodules.base import ImageDataModule
from odin_pl.loggers import default_logger, describe_logger
from odin_pl.module import ImageClassifier

ROOT = Path(__file__).resolve().parent
QUICKSTART_CONFIG = ROOT / "configs" / "experiment" / "quickstart.yaml"
TRAINER_DEFAULTS = ROOT / "configs" / "trainer" / "default.yaml"


def checkpoint_callback(dirpath: str | Path, select_best: bool) -> ModelCheckpoint:
    """``last.ckpt`` after every epoch and, with ``select_best``, ``best.ckpt`` at the highest ``val/acc``.

    File names are fixed (a new run in the same folder overwrites them), so the path to evaluate is known.
    """
    return ModelCheckpoint(dirpath=dirpath, filename="best", monitor="val/acc" if select_best else None, mode="max",
                           save_top_k=1 if select_best else 0, save_last=True, enable_version_counter=False)


class TrainCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="resume training from this checkpoint ('last' for the newest)")
        parser.add_argument("--experiment", type=str, default="train", help="run name (logger, output folders)")
        parser.add_argument("--skip_test", type=bool, default=False, help="do not report test accuracy at the end")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The configured trainer, with :func:`checkpoint_callback` added as the module docstring says."""
        config = self._get(self.config_init, "trainer", default={})
        configured = config.get("callbacks") or []
        callbacks: list[Callback] = list(configured) if isinstance(configured, list) else [configured]
        if config.get("enable_checkpointing") is not False and not any(isinstance(c, ModelCheckpoint)
                                                                        for c in callbacks):
            dirpath = Path(config.get("default_root_dir") or os.getcwd()) / "checkpoints"
            callbacks.append(checkpoint_callback(dirpath, getattr(self.datamodule, "val_split", 0) > 0))
        return super().instantiate_trainer(**{"callbacks": callbacks, **kwargs})


def build_cli(args: list[str]) -> TrainCLI:
    """Parse ``args`` (the quickstart config when no ``--config`` is given) and build model, data and trainer."""
    if not any(a in ("--config", "-c") or a.startswith("--config=") for a in args):
        args = ["--config", str(QUICKSTART_CONFIG), *args]  # the quickstart is the default configuration
    return TrainCLI(ImageClassifier, ImageDataModule, subclass_mode_data=True, run=False, args=args,
                    save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False,
                    parser_kwargs={"default_config_files": [str(TRAINER_DEFAULTS)]})


def fit_and_test(cli: TrainCLI) -> str:
    """Fit, report test accuracy, print what to run next; returns the path of the checkpoint to evaluate."""
    trainer, config = cli.trainer, cli.config
    if config.trainer.logger is None:  # not chosen in the config: W&B (offline without network) or CSV
        trainer.logger = default_logger(trainer.default_root_dir, name=config.experiment)
    trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=config.ckpt_path)
    callback = trainer.checkpoint_callback
    best = callback.best_model_path if callback is not None else ""
    if not config.skip_test:
        trainer.test(cli.model, datamodule=cli.datamodule, verbose=True, ckpt_path=best or None)
    ckpt = (best or callback.last_model_path) if callback is not None else ""
    if trainer.is_global_zero:
        if note := describe_logger(trainer.logger):
            print(note)
        if ckpt:
            print(f"Checkpoint: {ckpt}\nEvaluate it with:\n  python evaluate.py --ckpt {ckpt}")
        else:
            print("No checkpoint was saved (trainer.enable_checkpointing is off)")
    return ckpt


def main(args: list[str] | None = None) -> str:
    """Run training; returns the path of the checkpoint to evaluate."""
    return fit_and_test(build_cli(sys.argv[1:] if args is None else args))


if __name__ == "__main__":
    main()
