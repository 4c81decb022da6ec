"""ODINEvalCallback in anyone's code: a plain LightningModule and DataModule written here (not the project's), the
image spec on the model, else on the DataModule, else an argument; one process and 2 DDP CPU processes log the
metrics of a direct computation."""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks import ODINEvalCallback
from conftest import free_port
from datamodules import build_ood_dataset
from odin_pl import ImageSpec, odin_score
from odin_pl.errors import UserError
from odin_pl.metrics import ood_metrics

SPEC = ImageSpec(8, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), ("a", "b", "c", "d", "e"))
OOD_IMAGES = 30


class TinyNet(pl.LightningModule):
    """A linear classifier of 3 x 8 x 8 images; ``spec``: the ``image_spec`` attribute, when given."""

    def __init__(self, spec: ImageSpec | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))
        if spec is not None:
            self.image_spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.log("val/loss", nn.functional.cross_entropy(self(batch[0]), batch[1]), sync_dist=True)


class TinyData(pl.LightningDataModule):
    """41 seeded normalized images (an odd count: uneven shards) as the validation set."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(1)
        self.val = TensorDataset(torch.randn(41, 3, 8, 8, generator=generator), torch.arange(41) % 5)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=16)


class TinyDataWithSpec(TinyData):
    image_spec = SPEC


def _validate(where: str, devices: int, root: str) -> dict[str, float]:
    model = TinyNet(SPEC if where == "model" else None)
    data = TinyDataWithSpec() if where == "datamodule" else TinyData()
    callback = ODINEvalCallback(ood=["gaussian"], temperature=10.0, epsilon=0.002, batch_size=8,
                                num_images=OOD_IMAGES, image_spec=SPEC.to_dict() if where == "argument" else None)
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", logger=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                         default_root_dir=root)
    trainer.validate(model, datamodule=data, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("ood/")}


def _expected() -> dict[str, float]:
    """The metrics computed here: MSP and ODIN (T = 10, epsilon = 0.002) on the validation set and the OOD set."""
    model, data = TinyNet().eval(), TinyData()
    ood = build_ood_dataset("gaussian", SPEC, num_images=OOD_IMAGES)
    x_in, x_out = data.val.tensors[0], torch.stack([ood[i][0] for i in range(len(ood))])
    expected = {}
    for method, (t, e) in {"msp": (1.0, 0.0), "odin": (10.0, 0.002)}.items():
        metrics = ood_metrics(odin_score(model, x_in, t, e, SPEC.std), odin_score(model, x_out, t, e, SPEC.std))
        expected.update({f"ood/gaussian/{method}/{name}": value for name, value in metrics.items()})
    return expected


@pytest.mark.parametrize("where", ["model", "datamodule", "argument"])
def test_the_spec_comes_from_the_model_the_datamodule_or_the_argument(where: str, tmp_path: Path) -> None:
    logged = _validate(where, 1, str(tmp_path))
    expected = _expected()
    assert logged.keys() == expected.keys()
    for key, value in expected.items():
        assert logged[key] == pytest.approx(value, abs=1e-5), key


def test_without_a_spec_one_line_says_where_to_give_it(tmp_path: Path) -> None:
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path,
                         callbacks=[ODINEvalCallback(ood=["gaussian"], num_images=OOD_IMAGES)])
    with pytest.raises(UserError, match=r"give ODINEvalCallback\(image_spec=ImageSpec"):
        trainer.validate(TinyNet(), datamodule=TinyData(), verbose=False)


def _ddp_process(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank), NODE_RANK="0")
    torch.set_num_threads(1)
    logged = _validate("datamodule", 2, out)
    if rank == 0:
        torch.save(logged, Path(out, "logged.pt"))


def test_two_ddp_processes_log_what_one_process_logs(tmp_path: Path) -> None:
    torch.multiprocessing.spawn(_ddp_process, args=(free_port(), str(tmp_path)), nprocs=2)
    two, one = torch.load(tmp_path / "logged.pt", weights_only=True), _validate("datamodule", 1, str(tmp_path))
    assert two.keys() == one.keys() and len(one) == 2 * 6
    for key, value in one.items():
        assert two[key] == pytest.approx(value, abs=1e-6), key
