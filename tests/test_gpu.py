"""GPU checks (skipped without CUDA): scoring on the GPU agrees with the CPU, and training + the callback run."""

from __future__ import annotations

import lightning.pytorch as pl
import timm
import torch

from callbacks import ODINEvalCallback
from conftest import requires_gpu
from datamodules import DigitsDataModule
from odin_pl import odin_score
from odin_pl.training.module import ImageClassifier
from odin_pl.methods.odin import score_settings
from odin_pl.methods import create_method


@requires_gpu
def test_odin_on_gpu_matches_cpu_float64() -> None:
    torch.manual_seed(0)
    model = timm.create_model("densenet_bc_100", num_classes=10).double().eval()
    x = torch.randn(8, 3, 32, 32, dtype=torch.float64)
    std = (0.247, 0.243, 0.261)
    paper_grid = create_method("odin").grid()
    cpu = score_settings(model, x, paper_grid, std)
    gpu = score_settings(model.cuda(), x.cuda(), paper_grid, std, forward_batch_size=64).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=0, atol=1e-9)
    with torch.inference_mode():
        torch.testing.assert_close(odin_score(model, x.cuda(), 1000.0, 0.0014, std).cpu(), cpu[-14], rtol=0, atol=1e-9)


@requires_gpu
def test_fit_with_callback_on_gpu(tmp_path) -> None:
    datamodule = DigitsDataModule()
    model = ImageClassifier("hendrycks_mlp", optimizer="adam", lr=1e-3, lr_milestones=[])
    trainer = pl.Trainer(accelerator="gpu", devices=1, max_epochs=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, default_root_dir=tmp_path,
                         callbacks=[ODINEvalCallback(ood=["uniform", "photos"], num_images=300)])
    trainer.fit(model, datamodule=datamodule)
    assert trainer.callback_metrics["ood/uniform/odin/auroc"] > 0.5
