"""odin_pl.protocol.run: input checks (the numbers are checked against a plain loop in test_grid_and_ddp.py)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from datamodules import DigitsDataModule
from odin_pl.training.module import ImageClassifier
from odin_pl.protocol.run import run_protocol


def test_protocol_rejects_an_empty_ood_set() -> None:
    datamodule = DigitsDataModule()
    datamodule.setup("test")
    model = ImageClassifier("hendrycks_mlp", image_spec=datamodule.image_spec.to_dict(), lr_milestones=[]).eval()
    empty = TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0))
    with pytest.raises(ValueError, match="'empty' is empty"):
        run_protocol(model, datamodule.test_set, {"empty": empty})
