"""``TrainingRun``: what a training run of train.py records about itself: its identity in every checkpoint and its
whole resolved configuration in the logger."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from callbacks.odin_eval import ODINEvalCallback
from odin_pl.methods import create_method
from odin_pl.training.checkpoint import TRAINING_KEY
from odin_pl.tracking.loggers import run_identity


class TrainingRun(Callback):
    """Keeps the run's identity in every checkpoint (``checkpoint["odin_pl"]["training"]``: the experiment, the seed
    and the logger's run, see :func:`odin_pl.tracking.loggers.run_identity`), so that a resumed fit continues its W&B
    run and
    an evaluation of the checkpoint is named after the experiment and joins the run's group; and logs ``config``
    (the resolved command-line configuration) once, completed with the model's resolved hyperparameters (number of
    classes, image spec), the class of every callback of the trainer and what each ODINEvalCallback measures
    (:func:`evaluation_callbacks`), in place of Lightning's flat copy of the model's initial arguments."""

    def __init__(self, experiment: str, seed: int | None, config: dict[str, Any]) -> None:
        self.experiment, self.seed, self.config = experiment, seed, config
        self._config_logged = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Lightning would log the model's and DataModule's initial arguments (num_classes and image_spec unset).
        pl_module._log_hyperparams = False
        if trainer.datamodule is not None:
            trainer.datamodule._log_hyperparams = False

    def _log_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._config_logged or trainer.logger is None:
            return
        self._config_logged = True
        model = {**(self.config.get("model") or {}), **pl_module.hparams}
        callbacks = [f"{type(c).__module__}.{type(c).__qualname__}" for c in trainer.callbacks]
        trainer.logger.log_hyperparams({**self.config, "model": model, "callbacks": callbacks,
                                        "ood_evaluation": evaluation_callbacks(trainer.callbacks)})

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_config(trainer, pl_module)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_config(trainer, pl_module)  # train.py validate (in fit, on_fit_start came first)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_config(trainer, pl_module)  # train.py test

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        checkpoint.setdefault("odin_pl", {})[TRAINING_KEY] = {"experiment": self.experiment, "seed": self.seed,
                                                              "logger": run_identity(trainer.logger)}


def evaluation_callbacks(callbacks: list[Callback]) -> dict[str, dict[str, Any]]:
    """Per ODINEvalCallback (keyed by where it logs, ``ood`` or ``ood/<name>``): its methods with their fixed
    parameters, its OOD sets and image counts, and how often it runs."""
    return {callback.prefix.rstrip("/"): {
        "methods": {method: dict(zip((p.name for p in create_method(method).params), setting))
                    for method, setting in callback.settings.items()},
        "sets": [ood.name for ood in callback.ood],
        "num_images": {ood.name: ood.num_images for ood in callback.ood},
        "every_n_epochs": callback.every_n_epochs, "batch_size": callback.batch_size}
        for callback in callbacks if isinstance(callback, ODINEvalCallback)}
