"""Epoch metrics that are exact under DDP: computed from every process's samples, then logged as they are.

Lightning's ``self.log(..., sync_dist=True)`` averages per-process means, which is not the mean over all samples
when the processes saw different numbers of them; here each process sums over its own (unpadded) shard, the sums
are added up across processes, and the resulting values, the same on every process, are logged with
:func:`log_global`.
"""

from __future__ import annotations

from typing import Any, Callable

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor


def log_global(module: pl.LightningModule, metrics: dict[str, Any], **kwargs: Any) -> None:
    """Log values that are already equal on every process. ``sync_dist`` with ``reduce_fx="max"`` leaves them
    exactly as they are and tells Lightning they are synced (it warns about epoch values that are not)."""
    module.log_dict(metrics, sync_dist=True, reduce_fx="max", **kwargs)


class ClassificationTotals:
    """Summed cross-entropy, correct predictions and sample count over one evaluation epoch, in float64 (float32
    on Apple's MPS, which has no float64)."""

    def __init__(self) -> None:
        self.sums: Tensor | None = None

    def reset(self, device: torch.device) -> None:
        dtype = torch.float32 if device.type == "mps" else torch.float64
        self.sums = torch.zeros(3, dtype=dtype, device=device)

    def update(self, logits: Tensor, targets: Tensor) -> None:
        self.sums[0] += F.cross_entropy(logits.to(self.sums.dtype), targets, reduction="sum")
        self.sums[1] += (logits.argmax(dim=1) == targets).sum()
        self.sums[2] += len(targets)

    def compute(self, sum_over_processes: Callable[[Tensor], Tensor]) -> dict[str, Tensor]:
        """``loss`` (mean cross-entropy) and ``acc`` over the samples of all processes; ``sum_over_processes`` is
        e.g. ``partial(trainer.strategy.reduce, reduce_op="sum")``."""
        loss, correct, count = sum_over_processes(self.sums.clone())
        return {"loss": loss / count, "acc": correct / count}
