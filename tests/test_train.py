"""train.py: the subcommands fit (the default), validate and test, and what the quickstart checkpoint records."""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io import torch_io
from lightning.pytorch.callbacks import Callback

import train
from conftest import REPO
from data_factories import flip_a_tensor_bit
from datamodules import DigitsDataModule
from odin_pl.training.checkpoint import run_progress
from odin_pl.training.console import ProgressLines
from odin_pl.training.module import ImageClassifier
from odin_pl.errors import UserError
from odin_pl.training.rng import set_rng_states


def test_quickstart_checkpoint_records_what_evaluation_needs(quickstart_ckpt: str) -> None:
    assert quickstart_ckpt.endswith("runs/quickstart/checkpoints/last.ckpt")
    checkpoint = torch.load(quickstart_ckpt, weights_only=True)
    hp = checkpoint["hyper_parameters"]
    assert hp["backbone"] == "hendrycks_mlp" and hp["num_classes"] == 10
    assert hp["image_spec"]["size"] == 8 and hp["image_spec"]["channels"] == 1
    assert hp["image_spec"]["dataset"] == "digits" and len(hp["image_spec"]["std"]) == 1
    assert checkpoint["odin_pl"]["datamodule_class"] == "datamodules.digits.DigitsDataModule"
    assert run_progress(quickstart_ckpt) == (True, 2)


def test_checkpoint_restores_the_torch_numpy_and_python_generators(quickstart_ckpt: str) -> None:
    states = torch.load(quickstart_ckpt, weights_only=True)["odin_pl"]["rng_states"]

    def draws() -> tuple:
        return torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random()

    set_rng_states(states)
    first = draws()
    set_rng_states(states)
    assert draws() == first


def test_a_checkpoint_torn_mid_write_leaves_the_previous_last_ckpt(quickstart_ckpt: str, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning's writer dies halfway through the file it was given; last.ckpt is still the previous one."""
    folder = tmp_path / "run"
    shutil.copytree(Path(quickstart_ckpt).parents[1], folder)
    last = folder / "checkpoints" / "last.ckpt"
    before = last.read_bytes()

    def torn_save(checkpoint: dict, path: str) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        Path(path).write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
        raise OSError("killed mid-write")

    monkeypatch.setattr(torch_io, "_atomic_save", torn_save)
    with pytest.raises(OSError, match="mid-write"):
        train.main(["--trainer.default_root_dir", str(folder), "--ckpt_path", "last", "--trainer.max_epochs", "3",
                    "--trainer.logger", "false", "--trainer.callbacks", "[]"])
    assert last.read_bytes() == before


def test_resuming_without_a_checkpoint_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py", "--ckpt_path", "last", "--trainer.default_root_dir", str(tmp_path),
                                      "--trainer.logger", "false"])
    assert train.run_command_line() == 2
    error = capsys.readouterr().err
    assert error.startswith("train.py: error: --ckpt_path last: there is no checkpoint to resume")
    assert error.count("\n") == 1 and not (tmp_path / "checkpoints").exists()


def test_a_damaged_checkpoint_to_resume_is_a_one_line_error(quickstart_ckpt: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Before issue 29 Lightning resumed from a bit-flipped last.ckpt without a word (torch checks no CRC-32)."""
    folder = tmp_path / "run"
    shutil.copytree(Path(quickstart_ckpt).parents[1], folder)
    flip_a_tensor_bit(folder / "checkpoints" / "last.ckpt")
    monkeypatch.setattr(sys, "argv", ["train.py", "--ckpt_path", "last", "--trainer.default_root_dir", str(folder),
                                      "--trainer.logger", "false", "--trainer.max_epochs", "3"])
    assert train.run_command_line() == 2
    error = capsys.readouterr().err
    assert error.startswith(f"train.py: error: checkpoint {folder / 'checkpoints' / 'last.ckpt'} is damaged: its "
                            "member ") and error.count("\n") == 1


def test_a_rerun_into_a_finished_run_needs_overwrite_then_replaces_its_checkpoint(quickstart_ckpt: str,
                                                                                   tmp_path: Path,
                                                                                   capsys: pytest.CaptureFixture
                                                                                   ) -> None:
    """``--trainer.default_root_dir`` moves the checkpoints; a finished run's last.ckpt is kept unless
    ``--overwrite true`` is given, and then replaced (no last-v1.ckpt), so the printed path, the one the README
    evaluates, is the newest model."""
    folder = tmp_path / "run"
    shutil.copytree(Path(quickstart_ckpt).parents[1], folder)
    last = folder / "checkpoints" / "last.ckpt"
    before = torch.load(last, weights_only=True)["state_dict"]
    args = ["--trainer.default_root_dir", str(folder), "--trainer.max_epochs", "1", "--trainer.logger", "false",
            "--trainer.callbacks", "[]", "--skip_test", "true", "--seed_everything", "1"]
    stamp = last.stat().st_mtime_ns
    with pytest.raises(UserError, match=re.escape(f"{last} is from a finished run: train into another folder with "
                       "--trainer.default_root_dir DIR, or replace its checkpoints with --overwrite true")):
        train.main(args)
    assert last.stat().st_mtime_ns == stamp
    ckpt = train.main([*args, "--overwrite", "true"])
    out = capsys.readouterr().out
    assert f"--overwrite true: the checkpoints of the earlier run in {last.parent} are replaced" in out
    assert Path(ckpt) == last
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["last.ckpt"]
    after = torch.load(ckpt, weights_only=True)["state_dict"]
    assert not all(torch.equal(before[k], after[k]) for k in before)
    assert f"Checkpoint: {ckpt}\nEvaluate it with:" in out


def test_fast_dev_run_writes_no_checkpoint_and_starts_no_logger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert train.main(["--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path)]) == ""
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "wandb").exists()
    output = capsys.readouterr().out
    assert "Evaluate it with" not in output and "No checkpoint was written (--trainer.fast_dev_run)" in output


def test_missing_data_is_reported_with_train_flags_before_a_logger_run(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setattr(sys, "argv", ["train.py", "--config", str(REPO / "configs" / "experiment" / "mlp_mnist.yaml"),
                                      "--data.init_args.data_root", str(tmp_path / "empty"),
                                      "--trainer.default_root_dir", str(tmp_path / "run")])
    assert train.run_command_line() == 2
    error = capsys.readouterr().err
    assert error.startswith("train.py: error: MNIST not found")
    assert "--data.init_args.data_root" in error and "--data_root" not in error
    assert not (tmp_path / "run" / "wandb").exists()


class FailsInSetup(Callback):
    """Fails where a callback's check of its inputs would: in setup, after Lightning created the logger's run."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        raise UserError("this callback refuses to start")


def test_a_failed_start_leaves_no_wandb_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(UserError, match="refuses to start"):
        train.main(["--trainer.default_root_dir", str(tmp_path), "--trainer.callbacks", json.dumps(
            [{"class_path": "test_train.FailsInSetup"}])])
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert runs == [] and "The failed start's W&B run was removed" in capsys.readouterr().out


def test_precision_auto_is_resolved_said_in_one_line_and_recorded(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """``--trainer.precision auto``: the trainer runs the precision the console line names, and the run's config
    (``TrainingRun``) records that precision, not "auto"."""
    cli = train.build_cli(["--trainer.precision", "auto", "--trainer.default_root_dir", str(tmp_path),
                           "--trainer.logger", "false", "--trainer.callbacks", "[]"], run=False)
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("precision: auto -> ")]
    chosen = line.split()[3]
    assert chosen in ("32-true", "bf16-mixed") and cli.trainer.precision == chosen
    (run,) = [c for c in cli.trainer.callbacks if type(c).__name__ == "TrainingRun"]
    assert run.config["trainer"]["precision"] == chosen


def test_progress_is_one_line_per_epoch_without_carriage_returns(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """stdout is not a terminal here (as in a log file): no progress bar, one line per epoch with its numbers."""
    train.main(["--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs", "3", "--trainer.logger",
                "false", "--trainer.callbacks", "[]", "--trainer.enable_progress_bar", "true", "--skip_test", "true",
                "--trainer.check_val_every_n_epoch", "2"])
    output = capsys.readouterr().out
    assert "\r" not in output
    epochs = [line for line in output.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert all(" loss " in line and " acc " in line and "left)" in line for line in epochs)
    assert ["val/acc" in line for line in epochs] == [False, True, False]  # only where validation ran


def test_a_slow_epoch_prints_a_line_at_each_tenth(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """With no quiet time (a slow epoch), a line at 10%, ..., 90% of the epoch's batches, then the epoch line."""
    trainer = pl.Trainer(max_epochs=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[ProgressLines(0.0)],
                         default_root_dir=tmp_path)
    trainer.fit(ImageClassifier(optimizer="adam", lr=1e-3), datamodule=DigitsDataModule(batch_size=32))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch 1/1")]
    total = trainer.num_training_batches
    assert [line.split()[2] for line in lines[:-1]] == [f"{10 * k}%" for k in range(1, 10)]
    assert all(f"/{total} batches" in line for line in lines[:-1]) and " loss " in lines[-1]


def test_with_defaults_adds_fit_and_the_quickstart_config_where_nothing_chooses_the_data(tmp_path: Path) -> None:
    quickstart = ["--config", str(train.QUICKSTART_CONFIG)]
    mnist, csv = str(REPO / "configs" / "data" / "mnist.yaml"), str(REPO / "configs" / "logger" / "csv.yaml")
    assert train.with_defaults([]) == ["fit", *quickstart]
    assert train.with_defaults(["--trainer.max_epochs", "1"]) == ["fit", *quickstart, "--trainer.max_epochs", "1"]
    assert train.with_defaults(["test", "--config", mnist]) == ["test", "--config", mnist]
    assert train.with_defaults([f"--config={mnist}"], run=False) == [f"--config={mnist}"]
    assert train.with_defaults(["--config", csv]) == ["fit", *quickstart, "--config", csv]
    assert train.with_defaults(["--data", "datamodules.MNISTDataModule"])[1:2] == ["--data"]
    # Only a data class chooses the data: a batch size alone keeps the quickstart's data set.
    batch = tmp_path / "batch.yaml"
    batch.write_text("data:\n  init_args:\n    batch_size: 8\n")
    assert train.with_defaults(["--config", str(batch), "--data.init_args.data_root", "d"])[1:3] == quickstart


def test_fit_is_the_default_subcommand_and_validate_and_test_load_the_checkpoint(tmp_path: Path,
                                                                                monkeypatch) -> None:
    """``train.py ARGS`` and ``train.py fit ARGS`` train alike; ``validate``/``test --ckpt_path`` evaluate a
    checkpoint and report the same test accuracy as the fit's final test."""
    monkeypatch.chdir(tmp_path)
    quick = ["--trainer.max_epochs", "1", "--trainer.logger", "false", "--seed_everything", "0"]
    # No callbacks: the quickstart's ODINEvalCallback is not needed here; train.py adds the checkpoint callback.
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


# --- Runs in fresh processes: an uninterrupted run, and runs killed with SIGKILL and resumed --------------------

# The quickstart with dropout, an augmenting DataModule (tests/train_helpers.py), 3 epochs of 4 batches.
RESUME_ARGS = ["--data", "train_helpers.AugmentedDigits", "--model.backbone", "dropout_mlp",
               "--model.weight_decay_scope", "all", "--trainer.max_epochs", "3", "--trainer.limit_train_batches", "4",
               "--trainer.limit_val_batches", "2", "--trainer.deterministic", "true", "--trainer.enable_model_summary",
               "false", "--skip_test", "true"]
KILL_AFTER_EPOCH = 1


def _train_in_process(folder: Path, *args: str, **env: str) -> tuple[int, str]:
    """``python train.py ARGS`` in a new process writing to ``folder``: (exit status, console output)."""
    console = folder / "console.txt"
    with open(console, "w") as out:  # a file, not a pipe: killed runs leave DataLoader workers that hold pipes open
        done = subprocess.run([sys.executable, str(REPO / "train.py"), *args, "--trainer.default_root_dir",
                               str(folder)], cwd=folder, stdout=out, stderr=subprocess.STDOUT, timeout=300,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]),
                                   **env})
    return done.returncode, console.read_text()


def _same(a: object, b: object) -> bool:
    """Nested dicts/lists of tensors and plain values are equal (tensors by torch.equal)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    """The resume tests' run without a kill, as a user runs it (W&B offline): (last.ckpt, console output)."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    status, console = _train_in_process(folder, *RESUME_ARGS, "--trainer.callbacks", "[]", WANDB_MODE="offline")
    assert status == 0, console
    return torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True), console


def test_a_normal_run_prints_no_warning_a_user_cannot_act_on_and_no_wandb_summary(
        uninterrupted: tuple[dict, str]) -> None:
    console = uninterrupted[1]
    for note in ("args parameter is intended", "tensorboardX", "litlogger", "anonymous", "LeafSpec", "sync_dist", "TPU",
                 "not supported by the model summary", "Warning:", "warnings.warn"):
        assert note not in console, note
    assert "W&B run saved offline" in console and "Checkpoint: " in console
    # No W&B history or summary at the end (wandb's start banner only): one line says where the run is and how
    # to upload it.
    lines = console.splitlines()
    after_training = lines[next(i for i, line in enumerate(lines) if line.startswith("epoch ")):]
    assert not [line for line in after_training if line.startswith("wandb:")]
    (where,) = [line for line in console.splitlines() if "wandb sync" in line]
    assert where.startswith("W&B run saved offline in ") and "\r" not in console


@pytest.mark.parametrize("workers", [0, 2])
def test_a_killed_run_resumes_exactly(uninterrupted: tuple[dict, str], workers: int, tmp_path: Path) -> None:
    """Killed (SIGKILL) during the epoch after epoch 1's checkpoint, then resumed with ``--ckpt_path last``: the
    same weights and optimizer state as the uninterrupted run (which loaded its data without workers)."""
    args = [*RESUME_ARGS, "--data.init_args.num_workers", str(workers), "--trainer.logger", "false"]
    kill = json.dumps([{"class_path": "train_helpers.KillAfterEpoch", "init_args": {"epoch": KILL_AFTER_EPOCH}}])
    status, console = _train_in_process(tmp_path, *args, "--trainer.callbacks", kill)
    assert status == -signal.SIGKILL, console
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert run_progress(last) == (False, KILL_AFTER_EPOCH + 1)  # a crash loses at most the epoch in progress
    if workers == 0:  # a new run over the unfinished one is refused, with the way out
        with pytest.raises(ValueError, match="stopped after 2 epoch.*--ckpt_path last.*--trainer.default_root_dir"
                           ".*--overwrite true"):
            train.main(["--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false"])
    status, console = _train_in_process(tmp_path, *args, "--trainer.callbacks", "[]", "--ckpt_path", "last")
    assert status == 0, console
    resumed, reference = torch.load(last, weights_only=True), uninterrupted[0]
    assert resumed["global_step"] == reference["global_step"] == 12 and run_progress(last)[0]
    assert _same(resumed["state_dict"], reference["state_dict"])
    assert _same(resumed["optimizer_states"], reference["optimizer_states"])
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]


def test_debug_shows_a_user_errors_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py", "--ckpt_path", "last", "--trainer.default_root_dir", str(tmp_path),
                                      "--trainer.logger", "false", "--debug"])
    with pytest.raises(UserError, match="--ckpt_path last: there is no checkpoint to resume"):
        train.run_command_line()


@pytest.mark.parametrize("argv, expected", [
    (["--model.lr", "nan"], "--model.lr: expected float, got 'nan'"),
    (["--trainer.max_epochz", "3"], "--trainer.max_epochz: unknown option (did you mean --trainer.max_epochs?)"),
    (["fitt"], "unexpected argument(s) fitt (did you mean fit?)"),
])
def test_a_parse_error_is_one_line(argv: list[str], expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys) -> None:
    """Before issue 29 train.py printed LightningCLI's usage dump (dozens of lines) before the message."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py", *argv])
    assert train.run_command_line() == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"train.py: error: {expected}"), err
    assert not (tmp_path / "runs").exists()  # nothing started
