"""Train a classifier: ``python train.py`` (the offline quickstart) or ``python train.py --config FILE ...``.

A LightningCLI over ``odin_pl.ImageClassifier`` and any ``datamodules.ImageDataModule`` with the subcommands
``fit`` (the default: ``python train.py ARGS`` is ``python train.py fit ARGS``), ``validate`` and ``test``. ``fit``
trains, reports test accuracy, then prints the checkpoint path and the ``evaluate.py`` command to run next.
Resume an interrupted run with ``--ckpt_path PATH`` (or ``last``); ``validate``/``test`` take ``--ckpt_path`` too.
Without ``--config`` the quickstart config is used. Several ``--config`` files compose, later ones overriding
earlier ones, on top of ``configs/trainer/default.yaml``, which is always loaded first (see ``configs/README.md``).

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
SUBCOMMANDS = ("fit", "validate", "test")


def checkpoint_callback(dirpath: str | Path, select_best: bool) -> ModelCheckpoint:
    """``last.ckpt`` after every epoch and, with ``select_best``, ``best.ckpt`` at the highest ``val/acc``.

    File names are fixed (a new run in the same folder overwrites them), so the path to evaluate is known.
    """
    return ModelCheckpoint(dirpath=dirpath, filename="best", monitor="val/acc" if select_best else None, mode="max",
                           save_top_k=1 if select_best else 0, save_last=True, enable_version_counter=False)


class TrainCLI(LightningCLI):
    """The LightningCLI of train.py: the checkpoint callback added (see the module docstring), a default logger,
    and after ``fit`` the test accuracy and the next command."""

    checkpoint_path = ""  # after fit: the checkpoint to evaluate

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name in SUBCOMMANDS}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--experiment", type=str, default="train", help="run name (logger, output folders)")
        parser.add_argument("--skip_test", type=bool, default=False, help="fit: do not report test accuracy at the end")

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

    def _default_logger(self) -> None:
        """No logger chosen in the config: W&B (offline without network) or CSV."""
        if self._get(self.config, "trainer").logger is None:
            self.trainer.logger = default_logger(self.trainer.default_root_dir,
                                                 name=self._get(self.config, "experiment"))

    before_fit = before_validate = before_test = _default_logger

    def after_fit(self) -> None:
        """Report test accuracy (of best.ckpt when one is kept), then print the checkpoint and what to run next."""
        trainer = self.trainer
        callback = trainer.checkpoint_callback
        best = callback.best_model_path if callback is not None else ""
        if not self._get(self.config, "skip_test"):
            trainer.test(self.model, datamodule=self.datamodule, verbose=True, ckpt_path=best or None)
        self.checkpoint_path = (best or callback.last_model_path) if callback is not None else ""
        if trainer.is_global_zero:
            if note := describe_logger(trainer.logger):
                print(note)
            if self.checkpoint_path:
                print(f"Checkpoint: {self.checkpoint_path}\nEvaluate it with:\n  python evaluate.py --ckpt "
                      f"{self.checkpoint_path}")
            else:
                print("No checkpoint was saved (trainer.enable_checkpointing is off)")


def with_defaults(args: list[str], run: bool = True) -> list[str]:
    """``args`` with the subcommand first (``fit`` when none is given; none when ``run`` is off) and the quickstart
    config when no ``--config`` is given."""
    if args[:1] in (["-h"], ["--help"]):
        return args
    command = [args[0]] if args and args[0] in SUBCOMMANDS else ["fit"] if run else []
    rest = args[len(command):] if args[:1] == command else args
    if not any(a in ("--config", "-c") or a.startswith("--config=") for a in rest):
        rest = ["--config", str(QUICKSTART_CONFIG), *rest]  # the quickstart is the default configuration
    return [*command, *rest]


def build_cli(args: list[str], run: bool = True) -> TrainCLI:
    """Parse ``args`` and run the subcommand (``fit`` when none is given); with ``run=False`` only parse the fit
    configuration and build model, data and trainer."""
    defaults = {"default_config_files": [str(TRAINER_DEFAULTS)]}
    return TrainCLI(ImageClassifier, ImageDataModule, subclass_mode_data=True, run=run, args=with_defaults(args, run),
                    save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False,
                    parser_kwargs={name: defaults for name in SUBCOMMANDS} if run else defaults)


def main(args: list[str] | None = None) -> str:
    """Run train.py; returns the path of the checkpoint to evaluate (after ``fit``; else "")."""
    return build_cli(sys.argv[1:] if args is None else args).checkpoint_path


if __name__ == "__main__":
    main()
