"""Golden outputs of evaluate.py: a guard that refactoring the entry point changes no number and no table.

The model is the quickstart's MLP with seeded initial weights (no training, so nothing varies between machines),
evaluated in float64 on a small grid. ``table.md`` must equal the stored one exactly; every numeric field of
``results.json`` and ``results.csv`` must equal it to 1e-9 (absolute), every other field exactly, except paths and
versions. New keys and columns are allowed, so that later work can add fields.

To regenerate after an intended change of the outputs: ``ODIN_PL_UPDATE_GOLDEN=1 pytest tests/test_golden.py``,
then review the diff of ``tests/golden/``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

import evaluate
from datamodules import DigitsDataModule
from odin_pl.training.module import ImageClassifier

GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("ODIN_PL_UPDATE_GOLDEN") == "1"
TOLERANCE = 1e-9
UNCHECKED_KEYS = {"checkpoint", "version"}  # paths and versions differ between machines
RUNS = {
    "paper": [],
    "cross": ["--tuning.mode", "cross"],
}
COMMON = ["--ood.sets", "gaussian,uniform,photos", "--ood.num_images", "300", "--tuning.temperatures", "1,10,1000",
          "--tuning.epsilons", "0,0.004,0.05", "--runtime.precision", "64-true", "--output.logger", "false"]


@pytest.fixture(scope="module")
def seeded_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The quickstart MLP on the digits with seed-0 initial weights, saved as train.py saves checkpoints."""
    path = tmp_path_factory.mktemp("golden") / "seeded.ckpt"
    torch.manual_seed(0)
    model = ImageClassifier(backbone="hendrycks_mlp", optimizer="adam", lr=1e-3, lr_milestones=[])
    trainer = pl.Trainer(max_epochs=0, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=DigitsDataModule())
    trainer.save_checkpoint(path)
    return str(path)


def _compare(expected: Any, actual: Any, where: str) -> None:
    """Recursive comparison: numbers to TOLERANCE, other values exactly; extra keys in ``actual`` are allowed."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: expected a mapping, got {actual!r}"
        for key, value in expected.items():
            if key in UNCHECKED_KEYS:
                continue
            assert key in actual, f"{where}: key {key!r} is missing"
            _compare(value, actual[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{where}: lists differ in length"
        for i, (e, a) in enumerate(zip(expected, actual)):
            _compare(e, a, f"{where}[{i}]")
    elif isinstance(expected, (int, float)) and not isinstance(expected, bool):
        assert isinstance(actual, (int, float)) and not isinstance(actual, bool), f"{where}: {actual!r} not a number"
        assert math.isclose(actual, expected, rel_tol=0, abs_tol=TOLERANCE), f"{where}: {actual!r} != {expected!r}"
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def _csv_rows(path: Path) -> list[dict[str, Any]]:
    def value(text: str) -> Any:
        try:
            return float(text)
        except ValueError:
            return text
    with path.open(newline="") as handle:
        return [{k: value(v) for k, v in row.items()} for row in csv.DictReader(handle)]


@pytest.mark.parametrize("run", list(RUNS))
def test_evaluation_outputs_equal_the_golden_files(seeded_checkpoint: str, run: str, tmp_path: Path) -> None:
    out = tmp_path / run
    evaluate.main(["protocol", "--ckpt", seeded_checkpoint, "--output.dir", str(out), *COMMON, *RUNS[run]])
    golden = GOLDEN / run
    if UPDATE:
        golden.mkdir(parents=True, exist_ok=True)
        for name in ("table.md", "results.json", "results.csv"):
            shutil.copy(out / name, golden / name)
    assert (out / "table.md").read_text() == (golden / "table.md").read_text()
    _compare(json.loads((golden / "results.json").read_text()), json.loads((out / "results.json").read_text()),
             "results.json")
    _compare(_csv_rows(golden / "results.csv"), _csv_rows(out / "results.csv"), "results.csv")
