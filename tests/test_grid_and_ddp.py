"""The fast grid search equals the straightforward loop; 2 DDP processes log what 1 process logs."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import free_port
from torch import nn
from torch.utils.data import TensorDataset

from callbacks import ODINEvalCallback
from odin_pl import odin_score
from odin_pl.training.checkpoint import build_datamodule, load_model, read_checkpoint
from odin_pl.metrics import ood_metrics, rates_at_tpr
from odin_pl.protocol import MethodGrid, ModelScorer, ProtocolPlan, run_protocol


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2),
                         nn.ReLU(), nn.Flatten(), nn.Linear(8 * 3 * 3, 5)).double().eval()


def _loop_protocol(model, x_in, x_out, tune_in, test_in, tune_out, test_out, grid, std):
    """The straightforward loop: perturb and re-score every image for every (T, epsilon), one at a time."""
    def scores(x, t, e):
        return torch.cat([odin_score(model, batch, t, e, std) for batch in x.split(7)])

    best = None
    for t, e in grid.settings:
        s_in, s_out = scores(x_in[tune_in], t, e), scores(x_out[tune_out], t, e)
        fpr = rates_at_tpr(s_in, s_out)[1]
        area = ood_metrics(s_in, s_out)["auroc"]
        key = (fpr, -area, -t, e)
        if best is None or key < best[0]:
            best = (key, (t, e))
    t, e = best[1]
    return (t, e), ood_metrics(scores(x_in[test_in], t, e), scores(x_out[test_out], t, e))


def test_grid_search_equals_straightforward_loop_in_float64() -> None:
    model = _small_cnn()
    std = (0.2, 0.5, 1.3)
    g = torch.Generator().manual_seed(1)
    x_in = torch.randn(44, 3, 8, 8, generator=g, dtype=torch.float64)
    x_out = 1.5 * torch.randn(38, 3, 8, 8, generator=g, dtype=torch.float64) + 0.3
    grid = MethodGrid.of("odin", {"temperature": (1, 2, 10, 1000), "epsilon": (0.0, 0.001, 0.002, 0.004, 0.02)})
    result = run_protocol(ProtocolPlan((MethodGrid.of("msp"), grid)), TensorDataset(x_in, torch.zeros(44)),
                          {"ood": TensorDataset(x_out, -torch.ones(38))}, ModelScorer(model, std, batch_size=7))
    splits = result.splits
    tune_in, tune_out = splits["in_distribution"].tune, splits["ood"].tune
    test_in = torch.tensor(sorted(set(range(44)) - set(tune_in.tolist())))
    test_out = torch.tensor(sorted(set(range(38)) - set(tune_out.tolist())))
    chosen, metrics = _loop_protocol(model, x_in, x_out, tune_in, test_in, tune_out, test_out, grid, std)
    odin = next(r for r in result.records if r.method == "odin")
    assert odin.setting == chosen
    assert {k: odin.metrics[k] for k in metrics} == metrics
    # A non-trivial case: perturbation and temperature matter here.
    assert chosen != (1.0, 0.0)


def _evaluate(ckpt: str, devices: int, root: str) -> dict[str, float]:
    """validate (with an ODINEvalCallback) and test the checkpoint in float64 on ``devices`` CPU processes; the
    logged metrics."""
    checkpoint = read_checkpoint(ckpt)
    callback = ODINEvalCallback(ood=["gaussian", "photos"], temperature=1000.0, epsilon=0.002, batch_size=50,
                                num_images=101)
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                         precision="64-true", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[callback], default_root_dir=root)
    model, datamodule = load_model(checkpoint), build_datamodule(checkpoint, eval_batch_size=64)
    trainer.validate(model, datamodule=datamodule, verbose=False)
    metrics = dict(trainer.callback_metrics)
    trainer.test(model, datamodule=datamodule, verbose=False)
    return {k: float(v) for k, v in {**metrics, **trainer.callback_metrics}.items()}


def _ddp_process(rank: int, port: int, ckpt: str, out: str) -> None:
    """One of 2 processes started as torchrun would start them; process 0 saves the metrics and all warnings."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank), NODE_RANK="0")
    torch.set_num_threads(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = _evaluate(ckpt, 2, out)
    if rank == 0:
        torch.save({"metrics": metrics, "warnings": [str(w.message) for w in caught]}, Path(out, "result.pt"))


def test_two_ddp_processes_log_what_one_process_logs(quickstart_ckpt: str, tmp_path) -> None:
    """val/*, test/* and the callback's ood/* of 2 DDP processes equal 1 process's (599 test images: the shards
    are uneven, and Lightning's sampler would pad them); no warning about sync_dist."""
    one = _evaluate(quickstart_ckpt, 1, str(tmp_path))
    torch.multiprocessing.spawn(_ddp_process, args=(free_port(), quickstart_ckpt, str(tmp_path)), nprocs=2)
    two = torch.load(tmp_path / "result.pt", weights_only=True)
    assert not [w for w in two["warnings"] if "sync_dist" in w]
    two = two["metrics"]
    assert len([k for k in one if k.startswith("ood/")]) == 2 * 2 * 6 and one.keys() == two.keys()
    assert {k: v for k, v in one.items() if "loss" not in k} == {k: v for k, v in two.items() if "loss" not in k}
    for key in ("val/loss", "test/loss"):
        assert two[key] == pytest.approx(one[key], abs=1e-12, rel=0)
