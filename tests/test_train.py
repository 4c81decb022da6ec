"""train.py: the subcommands fit (the default), validate and test, and what the quickstart checkpoint records."""

from __future__ import annotations

from pathlib import Path

import torch

import train


def test_quickstart_checkpoint_records_what_evaluation_needs(quickstart_ckpt: str) -> None:
    assert quickstart_ckpt.endswith("runs/quickstart/checkpoints/last.ckpt")
    checkpoint = torch.load(quickstart_ckpt, weights_only=True)
    hp = checkpoint["hyper_parameters"]
    assert hp["backbone"] == "hendrycks_mlp" and hp["num_classes"] == 10
    assert hp["image_spec"]["size"] == 8 and hp["image_spec"]["channels"] == 1
    assert hp["image_spec"]["dataset"] == "digits" and len(hp["image_spec"]["std"]) == 1
    assert checkpoint["odin_pl"]["datamodule_class"] == "datamodules.digits.DigitsDataModule"




def test_with_defaults_adds_fit_and_the_quickstart_config() -> None:
    quickstart = ["--config", str(train.QUICKSTART_CONFIG)]
    assert train.with_defaults([]) == ["fit", *quickstart]
    assert train.with_defaults(["--trainer.max_epochs", "1"]) == ["fit", *quickstart, "--trainer.max_epochs", "1"]
    assert train.with_defaults(["test", "--config", "x.yaml"]) == ["test", "--config", "x.yaml"]
    assert train.with_defaults(["--config", "x.yaml"], run=False) == ["--config", "x.yaml"]


def test_fit_is_the_default_subcommand_and_validate_and_test_load_the_checkpoint(tmp_path: Path,
                                                                                monkeypatch) -> None:
    """``train.py ARGS`` and ``train.py fit ARGS`` train alike; ``validate``/``test --ckpt_path`` evaluate a
    checkpoint and report the same test accuracy as the fit's final test."""
    monkeypatch.chdir(tmp_path)
    quick = ["--trainer.max_epochs", "1", "--trainer.logger", "false", "--seed_everything", "0"]
    # No callbacks: the quickstart's own checkpoint callback writes to a fixed folder; train.py adds its default one.
    plain = train.build_cli([*quick, "--trainer.default_root_dir", "a", "--trainer.callbacks", "[]"])
    explicit = train.build_cli(["fit", *quick, "--trainer.default_root_dir", "b", "--trainer.callbacks", "[]"])
    assert plain.subcommand == explicit.subcommand == "fit"
    assert Path(plain.checkpoint_path) == tmp_path / "a" / "checkpoints" / "last.ckpt"
    weights = [torch.load(cli.checkpoint_path, weights_only=True)["state_dict"] for cli in (plain, explicit)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    fit_accuracy = float(plain.trainer.callback_metrics["test/acc"])
    tested = train.build_cli(["test", *quick, "--ckpt_path", plain.checkpoint_path])
    assert tested.subcommand == "test" and tested.checkpoint_path == ""
    assert float(tested.trainer.callback_metrics["test/acc"]) == fit_accuracy
    validated = train.build_cli(["validate", *quick, "--ckpt_path", plain.checkpoint_path])
    assert "val/acc" in validated.trainer.callback_metrics
