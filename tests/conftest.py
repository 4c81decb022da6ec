"""Shared test setup: offline, CPU-only, no W&B; helpers to skip tests that need real data or a GPU."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("ODIN_PL_DATA", str(Path(__file__).resolve().parent / "_no_data_here"))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a test's process group)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def saved_scores(path: Path, method: str, setting: tuple[float, ...]) -> torch.Tensor:
    """One method's scores at one setting from a score file of the protocol (``scores/<set>__<split>.pt``)."""
    saved = torch.load(path)
    return saved["scores"][method][saved["plan"][method].index([float(v) for v in setting])]


def interrupt_scoring(monkeypatch: pytest.MonkeyPatch, batches: int) -> None:
    """Make the protocol's scorer raise RuntimeError("killed") after ``batches`` batches (a run killed inside a
    pass), and every scored range be saved as a chunk at once."""
    from odin_pl.evaluation import score_store
    from odin_pl.protocol import run as protocol

    real, calls = protocol.score_batch, []

    def scorer(*args, **kwargs):
        calls.append(1)
        if len(calls) > batches:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(protocol, "score_batch", scorer)
    monkeypatch.setattr(score_store, "CHUNK_SECONDS", 0.0)


def shared_dataset(relative: str) -> Path:
    """Path of a folder of ../shared/datasets, or skip the test when it is absent."""
    path = SHARED_DATASETS / relative
    if not path.exists():
        pytest.skip(f"{path} is not available on this machine")
    return path


@pytest.fixture(scope="session")
def quickstart_ckpt(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The quickstart config (``python train.py``) trained for 2 epochs in a temporary folder, once per session."""
    import train

    workdir = tmp_path_factory.mktemp("quickstart")
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        ckpt = train.main(["--trainer.max_epochs", "2", "--trainer.logger", "false"])
    finally:
        os.chdir(cwd)
    return str(workdir / ckpt)


@pytest.fixture
def float64_default():
    """torch's default dtype float64 during a test (pytorch-ood's buffers follow it), restored after."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
