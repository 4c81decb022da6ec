"""Stream detector predictions to CSV from any number of processes, then merge them in input order."""

from __future__ import annotations

import csv
import heapq
from pathlib import Path
from typing import Any, Sequence, TextIO

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter

COLUMNS = ("index", "path", "predicted_class", "class_name", "msp", "odin", "is_ood")


class DetectionCSVWriter(BasePredictionWriter):
    """Writes the outputs of :class:`odin_pl.prediction.DetectorModule` to ``path``.

    Each process appends its rows to its own part file as batches finish; after the predict loop, process 0
    merges the parts by image index (each part is already in index order, so the merge streams: no process
    holds all rows) into ``path`` and deletes them. ``paths`` (the images' files) and ``class_names`` fill the
    ``path`` and ``class_name`` columns when given.
    """

    def __init__(self, path: str | Path, paths: Sequence[str | Path] | None = None,
                 class_names: Sequence[str] = ()) -> None:
        super().__init__(write_interval="batch")
        self.path = Path(path)
        self.paths, self.class_names = paths, tuple(class_names)
        self._part: TextIO | None = None

    def _part_path(self, rank: int) -> Path:
        return self.path.with_name(f".{self.path.name}.part{rank}")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._part = self._part_path(trainer.global_rank).open("w", newline="")

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: dict[str, Any],
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int) -> None:
        columns = {k: v.tolist() for k, v in prediction.items()}
        rows = zip(columns["index"], columns["predicted_class"], columns["msp"], columns["odin"], columns["is_ood"])
        csv.writer(self._part).writerows(
            [index, self.paths[index] if self.paths is not None else "", label,
             self.class_names[label] if label < len(self.class_names) else "", msp, odin, is_ood]
            for index, label, msp, odin, is_ood in rows)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Close this process's part; once all processes are done, process 0 merges the parts."""
        self._part.close()
        trainer.strategy.barrier("DetectionCSVWriter")
        if trainer.is_global_zero:
            parts = [self._part_path(rank) for rank in range(trainer.world_size)]
            handles = [part.open(newline="") for part in parts]
            try:
                with self.path.open("w", newline="") as out:
                    writer = csv.writer(out)
                    writer.writerow(COLUMNS)
                    writer.writerows(heapq.merge(*map(csv.reader, handles), key=lambda row: int(row[0])))
            finally:
                for handle in handles:
                    handle.close()
            for part in parts:
                part.unlink()
