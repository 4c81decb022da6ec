"""Train a classifier: ``python train.py`` (the offline quickstart) or ``python train.py --config FILE``.

A LightningCLI (run=False) over ``odin_pl.ImageClassifier`` and any ``datamodules.ImageDataModule``; it fits,
reports test accuracy, then prints the checkpoint path and the ``evaluate.py`` command to run next.
Resume an interrupted run with ``--ckpt_path PATH``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from datamodules.base import ImageDataModule
from odin_pl.loggers import default_logger, describe_logger
from odin_pl.module import ImageClassifier

ROOT = Path(__file__).resolve().parent
QUICKSTART_CONFIG = ROOT / "configs" / "experiment" / "quickstart.yaml"


class TrainCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="resume training from this checkpoint ('last' for the newest)")
        parser.add_argument("--experiment", type=str, default="train", help="run name (logger, output folders)")
        parser.add_argument("--skip_test", type=bool, default=False, help="do not report test accuracy at the end")


def main(args: list[str] | None = None) -> str:
    """Run training; returns the path of the checkpoint to evaluate."""
    args = sys.argv[1:] if args is None else args
    if not any(a in ("--config", "-c") or a.startswith("--config=") for a in args):
        args = ["--config", str(QUICKSTART_CONFIG), *args]  # the quickstart is the default configuration
    cli = TrainCLI(ImageClassifier, ImageDataModule, subclass_mode_data=True, run=False, args=args,
                   save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False)
    trainer, config = cli.trainer, cli.config
    if config.trainer.logger is None:  # not chosen in the config: W&B (offline without network) or CSV
        trainer.logger = default_logger(trainer.default_root_dir, name=config.experiment)
    trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=config.ckpt_path)
    if not config.skip_test:
        trainer.test(cli.model, datamodule=cli.datamodule, verbose=True)
    callback = trainer.checkpoint_callback
    ckpt = (callback.best_model_path or callback.last_model_path) if callback is not None else ""
    if trainer.is_global_zero:
        if note := describe_logger(trainer.logger):
            print(note)
        if ckpt:
            print(f"Checkpoint: {ckpt}\nEvaluate it with:\n  python evaluate.py --ckpt {ckpt}")
        else:
            print("No checkpoint was saved (trainer.enable_checkpointing is off)")
    return ckpt


if __name__ == "__main__":
    main()
