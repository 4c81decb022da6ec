"""train.py's console: what a user can act on (notes that Lightning and PyTorch print on every run dropped) and
progress as plain lines where a progress bar would flood a log."""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from lightning_utilities.core import rank_zero

from odin_pl.progress import duration

LEAFSPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"  # torch's, about Lightning's own code
SUMMARY_PRECISION_WARNING = r"Precision .* is not supported by the model summary"  # the size estimate only


#: Lightning's notes that say nothing a user can act on: its litlogger advertisement, and accelerators that are
#: absent (the GPU line stays: it says whether the run uses one).
DROPPED_NOTES = ("💡 Tip", "TPU available: False", "HPU available: False")


class _DropNotes(logging.Filter):
    """Drops the log records that start with one of :data:`DROPPED_NOTES`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(DROPPED_NOTES)


def quiet_console() -> None:
    """Silence Lightning's notes in :data:`DROPPED_NOTES`, its note that the model summary's size estimate assumes
    32 bits, and torch's FutureWarning about Lightning's use of ``LeafSpec`` (calling it again adds nothing)."""
    for log in (rank_zero.log, logging.getLogger("lightning.pytorch.utilities.rank_zero")):
        if not any(isinstance(f, _DropNotes) for f in log.filters):
            log.addFilter(_DropNotes())
    warnings.filterwarnings("ignore", message=LEAFSPEC_WARNING, category=FutureWarning)
    warnings.filterwarnings("ignore", message=SUMMARY_PRECISION_WARNING)


def _one_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
              line: str | None = None) -> str:
    return f"warning: {' '.join(str(message).split())}\n"


def one_line_warnings() -> None:
    """Show every warning as one line, ``warning: MESSAGE``, without the source file and line of code that
    Python adds (which name a library's internals, not what the user can change)."""
    warnings.formatwarning = _one_line


class ProgressLines(Callback):
    """Training progress as plain lines, for a log file or a terminal without the progress bar: one line per epoch
    (loss, accuracy, validation accuracy when validation ran, time, time left) and, inside an epoch, a line at each
    10% of its batches once ``quiet_seconds`` have passed since the last line (fast runs print epoch lines only)."""

    def __init__(self, quiet_seconds: float = 30.0) -> None:
        self.quiet_seconds = quiet_seconds
        self._start = self._epoch_start = self._last_line = 0.0
        self._first_epoch = self._next_tenth = 0
        self._validated = False

    @rank_zero_only
    def _print(self, line: str) -> None:
        print(line, flush=True)
        self._last_line = time.monotonic()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = self._last_line = time.monotonic()
        self._first_epoch = trainer.current_epoch  # later than 0 when resumed

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start, self._next_tenth, self._validated = time.monotonic(), 1, False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        total = trainer.num_training_batches
        if not isinstance(total, int) or total < 10:  # an unsized or short epoch: epoch lines only
            return
        tenth = (batch_idx + 1) * 10 // total
        if self._next_tenth <= tenth < 10:
            self._next_tenth = tenth + 1
            if time.monotonic() - self._last_line >= self.quiet_seconds:
                self._print(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: {tenth * 10}% "
                            f"({batch_idx + 1}/{total} batches, {duration(time.monotonic() - self._epoch_start)})")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validated = not trainer.sanity_checking

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now, epoch, metrics = time.monotonic(), trainer.current_epoch + 1, trainer.callback_metrics
        keys = [("loss", "train/loss_epoch"), ("acc", "train/acc_epoch")] + [("val/acc", "val/acc")] * self._validated
        shown = ", ".join(f"{name} {float(metrics[key]):.4f}" for name, key in keys if key in metrics)
        left = ""
        if trainer.max_epochs and trainer.max_epochs > 0:
            per_epoch = (now - self._start) / (epoch - self._first_epoch)
            left = f", about {duration(per_epoch * (trainer.max_epochs - epoch))} left"
        self._print(f"epoch {epoch}/{trainer.max_epochs}: {shown or 'done'} ({duration(now - self._epoch_start)}"
                    f"{left})")
