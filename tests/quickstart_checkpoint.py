"""One quickstart checkpoint per test session, shared by the test modules that need a trained model."""

from __future__ import annotations

import os

import pytest

import train


def trained_quickstart(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The quickstart config trained for 2 epochs (as in test_pipeline.py), once per session."""
    workdir = tmp_path_factory.getbasetemp() / "shared_quickstart"
    ckpt = workdir / "runs" / "quickstart" / "checkpoints" / "last.ckpt"
    if not ckpt.exists():
        workdir.mkdir(exist_ok=True)
        cwd = os.getcwd()
        os.chdir(workdir)
        try:
            assert train.main(["--trainer.max_epochs", "2", "--trainer.logger", "false"]).endswith(
                "runs/quickstart/checkpoints/last.ckpt")
        finally:
            os.chdir(cwd)
    return str(ckpt)
