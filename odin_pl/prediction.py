"""Run an :class:`~odin_pl.detector.ODINDetector` over a data set in Lightning's predict loop, on any devices.

``Trainer(use_distributed_sampler=False).predict(DetectorModule(detector, dataset), return_predictions=False)``
with a writer callback (``callbacks.DetectionCSVWriter``): process r of W predicts the images r, r + W, ...
(:func:`~odin_pl.distributed.shard_indices`, no padding), so every image is scored exactly once, and each batch's
outputs carry the images' indices in the data set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from odin_pl.detector import ODINDetector
from odin_pl.distributed import shard_indices


class IndexedDataset(Dataset):
    """``(index, image)`` for the items ``(image, label)`` of a data set."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, Tensor]:
        return index, self.dataset[index][0]


class DetectorModule(pl.LightningModule):
    """The detector's model as a LightningModule whose predict step returns, per batch, the images' ``index``,
    ``predicted_class``, ``msp``, ``odin`` and ``is_ood``."""

    def __init__(self, detector: ODINDetector, dataset: Dataset, batch_size: int = 256, num_workers: int = 0
                 ) -> None:
        super().__init__()
        self.detector, self.dataset = detector, dataset
        self.model = detector.model  # a submodule, so that Lightning moves and converts it
        self.batch_size, self.num_workers = batch_size, num_workers

    def predict_dataloader(self) -> DataLoader:
        shard = shard_indices(len(self.dataset), self.global_rank, self.trainer.world_size)
        return DataLoader(Subset(IndexedDataset(self.dataset), shard), batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers)

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Any]:
        index, images = batch
        detection = self.detector.predict_all(images)
        return {"index": index, "predicted_class": detection.predicted_class, "msp": detection.msp,
                "odin": detection.odin, "is_ood": detection.is_ood}


def predict_with_detector(detector: ODINDetector, dataset: Dataset, writer: Callback, *, device: str = "auto",
                          devices: int = 1, precision: str = "32-true", batch_size: int = 256, num_workers: int = 0,
                          root_dir: str | Path | None = None) -> None:
    """Score every image of ``dataset`` once with ``detector`` on ``devices`` processes (Lightning's predict
    loop); ``writer`` (e.g. ``callbacks.DetectionCSVWriter``) receives each batch's outputs."""
    accelerator = "gpu" if device.startswith("cuda") else device
    trainer = pl.Trainer(accelerator=accelerator, devices=devices, strategy="ddp_spawn" if devices > 1 else "auto",
                         precision=precision, use_distributed_sampler=False, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[writer],
                         default_root_dir=root_dir)
    trainer.predict(DetectorModule(detector, dataset, batch_size, num_workers), return_predictions=False)
