"""``RunCheckpoint``: train.py's checkpoints. ``last.ckpt`` after every training epoch, written atomically; a
crash loses at most the epoch in progress."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import ModelCheckpoint

from odin_pl.training.checkpoint import RUN_KEY
from odin_pl.files import replace_atomically
from odin_pl.errors import UserError


class RunCheckpoint(ModelCheckpoint):
    """``<dirpath>/last.ckpt`` at the end of every training epoch and, with ``select_best``, ``best.ckpt`` at the
    highest ``val/acc``.

    Names are fixed (no ``last-v1.ckpt``): a new run in the folder replaces them, and train.py refuses to start
    one over an unfinished run. Each file is written as ``<name>.partial`` in the same folder and then renamed
    over ``<name>`` (:func:`odin_pl.files.replace_atomically`), so a kill mid-write leaves the previous file
    intact. Checkpoints record whether the run finished and its completed epochs (``checkpoint["odin_pl"]["run"]``):
    at the end of ``fit``, ``last.ckpt`` is written once more, marked finished. ``fast_dev_run`` writes nothing.
    """

    def __init__(self, dirpath: str, select_best: bool = False) -> None:
        if not _is_local_file_protocol(dirpath):
            raise UserError(f"RunCheckpoint writes to local folders only (it renames files atomically), got "
                            f"{dirpath}")
        super().__init__(dirpath=dirpath, filename="best", monitor="val/acc" if select_best else None, mode="max",
                         save_top_k=1 if select_best else 0, save_last=True, enable_version_counter=False,
                         save_on_train_epoch_end=True)
        self.run_finished = False

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)  # best.ckpt, and last.ckpt after it, when val/acc improved
        if not self._should_skip_saving_checkpoint(trainer):  # skips when saved at this step already
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.fast_dev_run:
            self.run_finished = True
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        checkpoint.setdefault("odin_pl", {})[RUN_KEY] = {"finished": self.run_finished,
                                                         "epochs": trainer.fit_loop.epoch_progress.current.processed}

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        staging = f"{filepath}.partial"
        super()._save_checkpoint(trainer, staging)  # Lightning's write (process 0) may go through another filesystem
        if trainer.is_global_zero:
            replace_atomically(staging, filepath)
        self._last_checkpoint_saved = filepath
