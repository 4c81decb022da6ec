"""End to end: train.py on the quickstart, ODINEvalCallback in fit and validate, evaluate.py's protocol."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import TensorDataset

import evaluate
import train
from callbacks import ODINEvalCallback
from datamodules import DigitsDataModule, build_ood_dataset
from odin_pl import odin_score
from odin_pl.metrics import ood_metrics
from odin_pl.module import ImageClassifier
from odin_pl.protocol import run_protocol

from conftest import REPO


@pytest.fixture(scope="module")
def quickstart_ckpt(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The quickstart config, trained for 2 epochs in a temporary folder."""
    workdir = tmp_path_factory.mktemp("quickstart")
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        ckpt = train.main(["--trainer.max_epochs", "2", "--trainer.logger", "false"])
    finally:
        os.chdir(cwd)
    return ckpt


def test_quickstart_checkpoint_records_what_evaluation_needs(quickstart_ckpt: str) -> None:
    assert quickstart_ckpt.endswith("runs/quickstart/checkpoints/last.ckpt")
    checkpoint = torch.load(quickstart_ckpt, weights_only=True)
    hp = checkpoint["hyper_parameters"]
    assert hp["backbone"] == "hendrycks_mlp" and hp["num_classes"] == 10
    assert hp["image_spec"]["size"] == 8 and hp["image_spec"]["channels"] == 1
    assert hp["image_spec"]["dataset"] == "digits" and len(hp["image_spec"]["std"]) == 1
    assert checkpoint["odin_pl"]["datamodule_class"] == "datamodules.digits.DigitsDataModule"


def test_evaluate_paper_protocol_writes_consistent_results(quickstart_ckpt: str, tmp_path) -> None:
    result = evaluate.evaluate(quickstart_ckpt, output_dir=str(tmp_path), num_ood_images=120,
                               temperatures="1,1000", epsilons="0,0.002", logger=False)
    data = json.loads((tmp_path / "results.json").read_text())
    assert {(r["ood"], r["method"]) for r in data["records"]} == {
        (s, m) for s in ("gaussian", "uniform", "photos") for m in ("msp", "odin")}
    assert (tmp_path / "results.csv").read_text().count("\n") == 7
    assert "| gaussian |" in (tmp_path / "table.md").read_text()
    figures = {p.name for p in (tmp_path / "figures").iterdir()}
    assert {"roc_gaussian.png", "scores_photos.png", "grid_uniform.png"} <= figures and len(figures) == 9
    # The digits test set has 599 images: half of it tunes, and the note says so.
    assert data["splits"]["in_distribution"]["n_tune"] == 299 and any("half" in n for n in data["notes"])
    tune = set(data["splits"]["gaussian"]["tune_indices"])
    assert len(tune) == 60 and data["splits"]["gaussian"]["n_test"] == 60
    for record in result.records:
        assert record["n_in"] == 300 and record["n_out"] == 60
        assert all(0 <= record[k] <= 1 for k in ("fpr_at_95_tpr", "auroc", "aupr_in", "aupr_out"))
        if record["method"] == "msp":
            assert (record["temperature"], record["epsilon"]) == (1.0, 0.0)
        else:
            assert record["temperature"] in (1.0, 1000.0) and record["epsilon"] in (0.0, 0.002)
    # Metrics recomputed from the saved per-image scores agree with the records.
    saved_in = torch.load(tmp_path / "scores" / "in_distribution__test.pt")
    saved_out = torch.load(tmp_path / "scores" / "uniform__test.pt")
    odin = next(r for r in result.records if r["ood"] == "uniform" and r["method"] == "odin")
    setting = (odin["temperature"], odin["epsilon"])
    s_in = saved_in["scores"][saved_in["settings"].index(setting)]
    s_out = saved_out["scores"][saved_out["settings"].index(setting)]
    assert ood_metrics(s_in, s_out) == {k: odin[k] for k in ood_metrics(s_in, s_out)}


def test_evaluate_fixed_and_transfer_modes(quickstart_ckpt: str, tmp_path) -> None:
    fixed = evaluate.evaluate(quickstart_ckpt, output_dir=str(tmp_path / "f"), ood="gaussian,uniform",
                              num_ood_images=100, temperature=10, epsilon=0.001, logger=False)
    assert all(r["temperature"] == 10 and r["epsilon"] == 0.001 for r in fixed.records if r["method"] == "odin")
    transfer = evaluate.evaluate(quickstart_ckpt, output_dir=str(tmp_path / "t"), ood="gaussian,uniform",
                                 num_ood_images=100, tune_on="noise", temperatures="1,100",
                                 epsilons="0,0.001", logger=False)
    chosen = {(r["temperature"], r["epsilon"]) for r in transfer.records if r["method"] == "odin"}
    assert len(chosen) == 1 and set(transfer.selections) == {"noise"}
    # MSP is reported on identical test splits whatever the mode.
    msp = lambda res: {r["ood"]: r["auroc"] for r in res.records if r["method"] == "msp"}  # noqa: E731
    assert msp(fixed) == msp(transfer)


def test_evaluate_cross_mode_reports_every_tuning_on_every_set(quickstart_ckpt: str, tmp_path) -> None:
    options = dict(ood="gaussian,uniform,photos", num_ood_images=100, temperatures="1,1000", epsilons="0,0.002",
                   logger=False)
    cross = evaluate.evaluate(quickstart_ckpt, output_dir=str(tmp_path / "c"), tune_on="all", **options)
    paper = evaluate.evaluate(quickstart_ckpt, output_dir=str(tmp_path / "p"), **options)
    odin = {(r["ood"], r["tuned_on"]): r for r in cross.records if r["method"] == "odin"}
    assert len(odin) == 9
    for record in paper.records:  # the diagonal is the paper protocol's result
        key = (record["ood"], record["tuned_on"] if record["method"] == "odin" else None)
        match = odin[key] if record["method"] == "odin" else next(
            r for r in cross.records if r["ood"] == record["ood"] and r["method"] == "msp")
        assert {k: match[k] for k in record} == record
    for (test_set, tuned_on), record in odin.items():  # off the diagonal: the tuning set's parameters
        chosen = cross.selections[tuned_on]
        assert (record["temperature"], record["epsilon"]) == (chosen.temperature, chosen.epsilon)
    assert "test set \\ tuned on" in (tmp_path / "c" / "table.md").read_text()


def test_evaluate_on_a_folder_of_images_names_the_set_after_it(quickstart_ckpt: str, tmp_path) -> None:
    from PIL import Image

    folder = tmp_path / "my_images" / "nested"
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for i in range(12):
        pixels = (torch.rand(20, 30, 3, generator=g) * 255).byte().numpy()
        Image.fromarray(pixels).convert("RGBA" if i % 3 else "L").save(folder / f"{i}.png")
    result = evaluate.evaluate(quickstart_ckpt, output_dir=str(tmp_path / "out"), ood=str(tmp_path / "my_images"),
                               temperature=1000, epsilon=0.001, logger=False)
    assert {r["ood"] for r in result.records} == {"my_images"}
    assert result.records[0]["n_out"] == 6


def test_evaluate_errors_are_clear(quickstart_ckpt: str, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate.evaluate(str(tmp_path / "missing.ckpt"), logger=False)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        evaluate.evaluate(str(garbage), logger=False)
    with pytest.raises(ValueError, match="unknown OOD set 'nope'"):
        evaluate.evaluate(quickstart_ckpt, output_dir=str(tmp_path), ood="nope", logger=False)
    with pytest.raises(ValueError, match="both --temperature and --epsilon"):
        evaluate.evaluate(quickstart_ckpt, temperature=10, logger=False)
    checkpoint = torch.load(quickstart_ckpt, weights_only=True)
    checkpoint["hyper_parameters"]["num_classes"] = 7  # the weights have a 10-way head
    mismatched = tmp_path / "mismatch.ckpt"
    torch.save(checkpoint, mismatched)
    with pytest.raises(ValueError, match="do not fit backbone 'hendrycks_mlp'"):
        evaluate.evaluate(str(mismatched), logger=False)


def test_evaluate_cli_runs_and_reports_errors(quickstart_ckpt: str, tmp_path) -> None:
    ok = subprocess.run([sys.executable, "evaluate.py", "--ckpt", quickstart_ckpt, "--output_dir", str(tmp_path),
                         "--ood", "uniform", "--num_ood_images", "50", "--temperature", "1000", "--epsilon",
                         "0.0014", "--logger", "false"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "| uniform |" in ok.stdout and (tmp_path / "results.json").exists()
    bad = subprocess.run([sys.executable, "evaluate.py", "--ckpt", str(tmp_path / "nope.ckpt")], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "does not exist" in bad.stderr


def _tiny_model_and_data() -> tuple[ImageClassifier, DigitsDataModule]:
    datamodule = DigitsDataModule(batch_size=64, eval_batch_size=128)
    model = ImageClassifier("hendrycks_mlp", image_spec=datamodule.image_spec.to_dict(), optimizer="adam",
                            lr=1e-3, lr_milestones=[])
    return model, datamodule


@pytest.mark.parametrize("stage", ["fit", "validate"])
def test_callback_logs_metrics_equal_to_direct_computation(stage: str, tmp_path) -> None:
    pl.seed_everything(0)
    model, datamodule = _tiny_model_and_data()
    callback = ODINEvalCallback(ood=["uniform"], temperature=100.0, epsilon=0.002, batch_size=100, num_images=150)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=3, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, callbacks=[callback], default_root_dir=tmp_path,
                         num_sanity_val_steps=0)
    trainer.fit(model, datamodule=datamodule) if stage == "fit" else trainer.validate(model, datamodule=datamodule)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("ood/")}
    assert len(logged) == 2 * 6
    # Independent computation: score the whole test set (= validation set) and the OOD set directly.
    model.eval()
    spec = datamodule.image_spec
    x_in = torch.stack([datamodule.test_set[i][0] for i in range(len(datamodule.test_set))])
    ood = build_ood_dataset("uniform", spec, num_images=150)
    x_out = torch.stack([ood[i][0] for i in range(len(ood))])
    for method, (t, e) in {"msp": (1.0, 0.0), "odin": (100.0, 0.002)}.items():
        expected = ood_metrics(odin_score(model, x_in, t, e, spec.std), odin_score(model, x_out, t, e, spec.std))
        for name, value in expected.items():
            assert logged[f"ood/uniform/{method}/{name}"] == pytest.approx(value, abs=1e-4), (method, name)


def test_callback_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="temperature"):
        ODINEvalCallback(temperature=0)
    with pytest.raises(ValueError, match="epsilon"):
        ODINEvalCallback(epsilon=-1e-3)
    with pytest.raises(ValueError, match="at least one OOD set"):
        ODINEvalCallback(ood=[])
    with pytest.raises(ValueError, match="unknown OOD set"):
        ODINEvalCallback(ood=["no_such_set"])
    with pytest.raises(ValueError, match="must be positive"):
        build_ood_dataset("uniform", DigitsDataModule().image_spec, num_images=0)


def test_protocol_rejects_an_empty_ood_set() -> None:
    model, datamodule = _tiny_model_and_data()
    datamodule.setup("test")
    empty = TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0))
    with pytest.raises(ValueError, match="'empty' is empty"):
        run_protocol(model.eval(), datamodule.test_set, {"empty": empty})


def test_evaluate_on_two_processes_equals_one(quickstart_ckpt: str, tmp_path) -> None:
    """Sharded scoring over 2 gloo processes (float64) gives exactly the single-process results."""
    options = dict(ood="gaussian,photos", num_ood_images=90, temperatures="1,1000", epsilons="0,0.002",
                   float64=True, logger=False)
    evaluate.evaluate(quickstart_ckpt, output_dir=str(tmp_path / "one"), **options)
    assert evaluate.evaluate(quickstart_ckpt, output_dir=str(tmp_path / "two"), devices=2, **options) is None
    one, two = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert one["records"] == two["records"] and one["tuning"] == two["tuning"]
    # Per-image scores agree to float64 rounding (a batch of other size may sum in another order).
    for name in ("in_distribution__test", "gaussian__tune", "photos__test"):
        torch.testing.assert_close(torch.load(tmp_path / "one" / "scores" / f"{name}.pt")["scores"],
                                   torch.load(tmp_path / "two" / "scores" / f"{name}.pt")["scores"],
                                   rtol=0, atol=1e-12)
