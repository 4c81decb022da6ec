"""The configs under configs/: every paper experiment trains, composition, checkpoints, the recipes' optimizers."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import REPO
from data_factories import write_cifar10, write_cifar10_folder, write_cifar100, write_mnist
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import DDPStrategy

import evaluate
import train
from callbacks import ODINEvalCallback
from datamodules import MNISTDataModule
from odin_pl.training.checkpoint import build_datamodule, load_model, read_checkpoint
from odin_pl.errors import UserError
from odin_pl.training.module import ImageClassifier, one_cycle_factor

CONFIGS = REPO / "configs"
#: One experiment config per paper setting (configs/experiment/ may hold others).
EXPERIMENTS = [f"{model}_{data}" for model in ("densenet_bc_100", "wrn_28_10", "wrn_40_4")
               for data in ("cifar10", "cifar100", "cifar80")] + ["mlp_mnist"]
#: The paper's settings (section 4.1; the MNIST notebook): max_epochs, batch size, weight decay, lr milestone epochs.
RECIPES = {"densenet_bc_100": (300, 64, 1e-4, [150, 225]), "wrn_28_10": (200, 128, 5e-4, [100, 150]),
           "wrn_40_4": (200, 128, 5e-4, [100, 150]), "hendrycks_mlp": (30, 128, 1e-5, [20])}
#: Writers of tiny data in the real on-disk formats, by the data config each experiment name ends with.
WRITERS: dict[str, Callable[[Path], object]] = {
    "cifar10": write_cifar10, "cifar100": write_cifar100, "cifar80": write_cifar100,
    "mnist": lambda root: write_mnist(root, gz=True), "cifar10_jpeg": write_cifar10_folder}


def _data_name(experiment: str) -> str:
    return experiment.rsplit("_", 1)[1]


def _config(group: str, name: str) -> str:
    return str(CONFIGS / group / f"{name}.yaml")


def _yaml(group: str, name: str) -> dict:
    return yaml.safe_load(Path(_config(group, name)).read_text())


@pytest.fixture(scope="module")
def parser():
    """train.py's parser (built once; parsing alone instantiates nothing)."""
    return train.build_cli(["--trainer.logger", "false"], run=False).parser


def _parse(parser, *configs: str) -> dict:
    """The parsed composition of ``configs`` (after configs/trainer/default.yaml), as a dict."""
    namespace = parser.parse_args([a for c in configs for a in ("--config", c)])
    namespace.pop("config")
    return namespace.as_dict()


def _quick_args(tmp_path: Path, data_name: str | None) -> list[str]:
    """Tiny generated data in the real format (none for ``data_name`` None: the digits), batch 2, CPU, no logger,
    in ``tmp_path``."""
    data_root = tmp_path / "data"
    if data_name is not None and not data_root.exists():
        WRITERS[data_name](data_root)
    return ["--data.init_args.data_root", str(data_root), "--data.init_args.batch_size", "2",
            "--data.init_args.num_workers", "0", "--trainer.accelerator", "cpu",
            "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.num_sanity_val_steps", "0"]


#: Every file under configs/ that train.py reads (configs/evaluate/ is evaluate.py's), as "group/name".
TRAIN_CONFIGS = sorted(f"{p.parent.name}/{p.stem}" for p in CONFIGS.glob("*/*.yaml") if p.parent.name != "evaluate")
#: Files that need what a test machine lacks or minutes to run: parsed and built (run=False) instead of trained.
BUILD_ONLY = {"trainer/gpu": "needs a GPU", "trainer/ddp": "starts processes", "model/compile": "compiles for minutes"}
#: The data format each DataModule class reads (the key of WRITERS); the quickstart's digits need no files.
DATA_FORMATS = {"CIFAR10DataModule": "cifar10", "CIFAR100DataModule": "cifar100", "CIFAR80DataModule": "cifar80",
                "MNISTDataModule": "mnist", "DigitsDataModule": None}


def _data_format(config: dict) -> str | None:
    data = config["data"]
    if data["init_args"].get("image_folder"):
        return "cifar10_jpeg"
    return DATA_FORMATS[data["class_path"].rsplit(".", 1)[1]]


def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    """``{"a.b": value}`` for every leaf of a nested mapping (lists are leaves)."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        out.update(_leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def _run_alone(parser, tmp_path: Path, *configs: str, extra: tuple[str, ...] = ()) -> train.TrainCLI:
    """``train.py --config C ... --trainer.fast_dev_run true`` with generated data where the data need files."""
    args = [a for c in configs for a in ("--config", c)]
    data_format = _data_format(_parse(parser, *_config_files(args)))
    return train.build_cli([*args, "--trainer.fast_dev_run", "true", *_quick_args(tmp_path, data_format), *extra])


def _config_files(args: list[str]) -> list[str]:
    """The config files train.py reads for ``args`` (the quickstart first where they choose no data)."""
    return [a for a in train.with_defaults(args, run=False) if a != "--config"]


@pytest.mark.parametrize("name", TRAIN_CONFIGS)
def test_every_config_file_works_alone(parser, name: str, tmp_path: Path) -> None:
    """``train.py --config configs/<group>/<file>.yaml`` alone trains (fast_dev_run: one step, one validation and
    one test batch at batch 2, generated data in the real format): files that choose no data run the quickstart
    with what they set."""
    config = _config(*name.split("/"))
    own = _yaml(*name.split("/"))
    if name in BUILD_ONLY:
        composed = _parse(parser, *_config_files(["--config", config]))
        assert all(composed[group][key] == value for group in ("trainer", "model") for key, value in
                   own.get(group, {}).items()), BUILD_ONLY[name]
        assert composed["experiment"] == "quickstart" and composed["data"]["class_path"].endswith("DigitsDataModule")
        return
    cli = _run_alone(parser, tmp_path, config)
    assert cli.trainer.global_step == 1 and "test/acc" in cli.trainer.callback_metrics
    assert cli.checkpoint_path == "" and not (tmp_path / "run" / "checkpoints").exists()
    if "backbone" in own.get("model", {}):
        assert cli.model.hparams.backbone == own["model"]["backbone"]
    if "data" not in own:  # the quickstart's data and experiment, with this file's settings
        assert type(cli.datamodule).__name__ == "DigitsDataModule" and cli.config.fit.experiment == "quickstart"
    classes = {"CIFAR80DataModule": 80, "CIFAR100DataModule": 100}.get(type(cli.datamodule).__name__, 10)
    assert cli.model.hparams.num_classes == classes


@pytest.mark.parametrize("name", [n for n in TRAIN_CONFIGS if not n.startswith("experiment/")])
def test_every_config_file_added_to_any_experiment_sets_what_it_names(parser, name: str) -> None:
    """``--config experiment/E --config <group>/<file>``: every value the file names is the composed value (a later
    file wins), the experiment keeps the rest; ``callbacks+`` appends to the experiment's callbacks."""
    own = _yaml(*name.split("/"))
    appended = own.get("trainer", {}).pop("callbacks+", [])
    for experiment in sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml")):
        alone, composed = (_parse(parser, *_config_files(["--config", _config("experiment", experiment), *more]))
                           for more in ([], ["--config", _config(*name.split("/"))]))
        assert {k: v for k, v in _leaves(composed).items() if k in _leaves(own)} == _leaves(own), experiment
        kept = {k: v for k, v in _leaves(alone).items() if k not in _leaves(own) and k != "trainer.callbacks"
                and not k.startswith("data.")}  # a new data class keeps only the init_args it accepts
        assert {k: _leaves(composed).get(k) for k in kept} == kept, experiment
        before, after = alone["trainer"].get("callbacks") or [], composed["trainer"].get("callbacks") or []
        if appended:
            assert after[:len(before)] == before and len(after) == len(before) + len(appended), experiment
            for added, given in zip(after[len(before):], appended):
                assert added["class_path"] == given["class_path"]
                assert {k: added["init_args"][k] for k in given["init_args"]} == given["init_args"]
        elif "callbacks" not in own.get("trainer", {}):
            assert after == before, experiment


def test_documented_combinations_train(parser, tmp_path: Path) -> None:
    """The combinations configs/README.md shows (fast_dev_run; GPU ones parsed above), and the callback one-liner
    on the quickstart, which already has an ODINEvalCallback: the second is named automatically and logs."""
    jpeg = _run_alone(parser, tmp_path / "jpeg", _config("experiment", "densenet_bc_100_cifar10"),
                      _config("data", "cifar10_jpeg"))
    assert jpeg.datamodule.folder is not None and jpeg.trainer.global_step == 1
    wrn = _run_alone(parser, tmp_path / "wrn", _config("data", "cifar100"), _config("model", "wrn_40_4"),
                     extra=("--trainer.max_epochs", "200", "--experiment", "wrn_40_4_c100_test"))
    assert (wrn.model.hparams.backbone, wrn.model.hparams.num_classes) == ("wrn_40_4", 100)
    one_liner = ("--trainer.callbacks+=callbacks.ODINEvalCallback", "--trainer.callbacks.every_n_epochs=1",
                 "--trainer.callbacks.ood=[gaussian,uniform]", "--trainer.callbacks.num_images=50", "--skip_test",
                 "true")
    for extra in (one_liner, ("--config", _config("callbacks", "odin_eval"), "--trainer.callbacks.every_n_epochs=1",
                              "--trainer.callbacks.num_images=50", "--skip_test", "true")):
        cli = _run_alone(parser, tmp_path / str(len(extra)), str(train.QUICKSTART_CONFIG), extra=extra)
        names = [c.name for c in cli.trainer.callbacks if isinstance(c, ODINEvalCallback)]
        assert names == [None, "odin_eval2"]
        assert 0 <= float(cli.trainer.callback_metrics["ood/odin_eval2/gaussian/odin/auroc"]) <= 1


def test_evaluation_callbacks_with_one_name_are_refused_before_the_trainer(tmp_path: Path) -> None:
    named = json.dumps([{"class_path": "callbacks.ODINEvalCallback", "init_args": {"name": "noise"}}] * 2)
    with pytest.raises(UserError, match="several ODINEvalCallbacks are named noise .* distinct init_args.name"):
        train.build_cli([*_quick_args(tmp_path, None), "--trainer.callbacks", named], run=False)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_is_its_data_and_model_configs_plus_the_recipe(parser, experiment: str) -> None:
    """Giving the data and model configs first changes nothing: the experiment repeats them, with the recipe."""
    config = _parse(parser, _config("experiment", experiment))
    backbone = config["model"]["backbone"]
    model_name = next(p.stem for p in (CONFIGS / "model").glob("*.yaml")
                      if _yaml("model", p.stem)["model"].get("backbone") == backbone)
    composed = _parse(parser, _config("data", _data_name(experiment)), _config("model", model_name),
                      _config("experiment", experiment))
    assert composed == config
    max_epochs, batch_size, weight_decay, _ = RECIPES[backbone]
    assert (config["trainer"]["max_epochs"], config["data"]["init_args"]["batch_size"]) == (max_epochs, batch_size)
    assert config["model"]["weight_decay"] == weight_decay
    assert config["data"]["init_args"]["val_split"] == 0  # the paper trains on the whole training set
    assert config["experiment"] == experiment and config["trainer"]["default_root_dir"] == f"runs/{experiment}"


def test_configs_compose_later_files_win(parser) -> None:
    base = _config("experiment", "densenet_bc_100_cifar10")
    gpu = _parse(parser, base, _config("trainer", "gpu"), _config("model", "gpu_fast"), _config("model", "compile"),
                 _config("callbacks", "odin_eval"))
    assert (gpu["trainer"]["accelerator"], gpu["trainer"]["devices"], gpu["trainer"]["precision"]) == \
        ("gpu", 1, "16-mixed")
    assert gpu["model"]["channels_last"] and gpu["model"]["compile"] and gpu["trainer"]["max_epochs"] == 300
    assert [c["class_path"] for c in gpu["trainer"]["callbacks"]] == ["callbacks.ODINEvalCallback"]
    ddp = _parse(parser, base, _config("trainer", "gpu"), _config("trainer", "ddp"))
    assert (ddp["trainer"]["strategy"], ddp["trainer"]["devices"], ddp["trainer"]["sync_batchnorm"]) == \
        ("ddp", 2, True)
    # Another data set keeps the experiment's batch size; the JPEG copy is CIFAR-10 read from class folders.
    jpeg = _parse(parser, base, _config("data", "cifar10_jpeg"))
    assert jpeg["data"]["class_path"] == "datamodules.CIFAR10DataModule"
    assert (jpeg["data"]["init_args"]["image_folder"], jpeg["data"]["init_args"]["batch_size"]) == ("cifar10-jpeg", 64)
    cifar100 = _parse(parser, base, _config("data", "cifar100"))
    assert cifar100["data"]["class_path"] == "datamodules.CIFAR100DataModule"
    assert cifar100["data"]["init_args"]["batch_size"] == 64
    # trainer/default.yaml is the base of every run, without being named.
    trainer = _parse(parser, _config("data", "mnist"))["trainer"]
    assert (trainer["default_root_dir"], trainer["devices"], trainer["enable_progress_bar"]) == ("runs/train", 1, True)


def test_train_adds_the_checkpoint_and_keeps_appended_callbacks(tmp_path: Path) -> None:
    def callbacks(*extra: str) -> list:
        cli = train.build_cli(["--config", _config("experiment", "mlp_mnist"), "--config",
                               _config("callbacks", "odin_eval"), *_quick_args(tmp_path, "mnist"), *extra], run=False)
        return cli.trainer.callbacks

    plain = callbacks()
    assert sum(isinstance(c, ODINEvalCallback) for c in plain) == 1
    (checkpoint,) = [c for c in plain if isinstance(c, ModelCheckpoint)]
    assert Path(checkpoint.dirpath) == tmp_path / "run" / "checkpoints"
    assert checkpoint.save_last and checkpoint.monitor is None and checkpoint.save_top_k == 0
    (selecting,) = [c for c in callbacks("--data.init_args.val_split", "0.25") if isinstance(c, ModelCheckpoint)]
    assert (selecting.monitor, selecting.mode, selecting.save_top_k) == ("val/acc", "max", 1) and selecting.save_last
    assert not any(isinstance(c, ModelCheckpoint) for c in callbacks("--trainer.enable_checkpointing", "false"))
    ddp = train.build_cli(["--config", _config("experiment", "mlp_mnist"), "--config", _config("trainer", "ddp"),
                           *_quick_args(tmp_path, "mnist")], run=False).trainer
    assert isinstance(ddp.strategy, DDPStrategy) and ddp.num_devices == 2


def test_logger_configs_are_one_format_for_both_scripts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    """configs/logger/*.yaml: train.py maps the top-level ``logger:`` into trainer.logger, named after the experiment
    and seed (a trainer.logger that is set wins); evaluate.py reads the same files as ``--logger.*``; a bad value is
    a one-line error in both."""
    quickstart = ["--config", str(train.QUICKSTART_CONFIG), "--trainer.default_root_dir", str(tmp_path), "--config",
                  _config("logger", "csv")]
    logger = train.build_cli(quickstart, run=False).trainer.logger
    assert isinstance(logger, CSVLogger) and Path(logger.log_dir) == tmp_path / "quickstart-seed0" / "version_0"
    assert train.build_cli([*quickstart, "--trainer.logger", "false"], run=False).trainer.logger is None
    protocol = evaluate.build_parser()[1]["protocol"]
    for name in ("csv", "wandb"):
        options = protocol.parse_args(["--ckpt", "x.ckpt", "--config", _config("logger", name)]).logger
        assert options.backend == name and options.project == "odin-pl"
    monkeypatch.setattr(sys, "argv", ["evaluate.py", "--ckpt", "x.ckpt", "--logger.backend", "tensorboard"])
    assert evaluate.run_command_line() == 2
    monkeypatch.setattr(sys, "argv", ["train.py", "--logger.mode", "sometimes", "--trainer.default_root_dir",
                                      str(tmp_path)])
    assert train.run_command_line() == 2
    assert capsys.readouterr().err.splitlines() == [
        "evaluate.py: error: --logger.backend must be one of wandb, csv, got 'tensorboard'",
        "train.py: error: --logger.mode must be one of auto, online, offline, got 'sometimes' (the environment "
        "variable WANDB_MODE=disabled turns W&B off)"]


def test_best_checkpoint_only_with_a_validation_split(tmp_path: Path) -> None:
    ckpt = train.main(["--config", _config("experiment", "mlp_mnist"), "--trainer.max_epochs", "2",
                       "--data.init_args.val_split", "0.25", *_quick_args(tmp_path, "mnist")])
    folder = tmp_path / "run" / "checkpoints"
    assert Path(ckpt) == folder / "best.ckpt" and sorted(p.name for p in folder.iterdir()) == ["best.ckpt",
                                                                                              "last.ckpt"]
    state = torch.load(ckpt, weights_only=True)["callbacks"]
    (best,) = [v for k, v in state.items() if k.startswith("RunCheckpoint")]
    assert best["best_model_path"] == ckpt and best["best_model_score"] is not None


def test_checkpoint_round_trip_and_resume(tmp_path: Path) -> None:
    """The checkpoint restores the weights, hyper-parameters and image spec; --ckpt_path last resumes."""
    args = ["--config", _config("experiment", "mlp_mnist"), *_quick_args(tmp_path, "mnist")]
    cli = train.build_cli(["fit", *args, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
                           "--trainer.limit_test_batches", "2"])
    ckpt = cli.checkpoint_path
    checkpoint = read_checkpoint(ckpt)
    model = load_model(checkpoint, ckpt)
    trained = cli.model.state_dict()
    assert model.state_dict().keys() == trained.keys()
    assert all(torch.equal(value, trained[key]) for key, value in model.state_dict().items())
    recipe = _yaml("model", "mnist_mlp")["model"]
    assert {k: model.hparams[k] for k in recipe} == {k: cli.model.hparams[k] for k in recipe}
    assert model.hparams["lr_milestones"] == [0.6667] and model.hparams["weight_decay_scope"] == "hidden_weights"
    assert model.image_spec == cli.datamodule.image_spec and model.hparams["num_classes"] == 10
    datamodule = build_datamodule(checkpoint)
    assert isinstance(datamodule, MNISTDataModule) and datamodule.image_spec == cli.datamodule.image_spec
    assert (datamodule.data_root, datamodule.batch_size) == (cli.datamodule.data_root, 2)

    assert checkpoint["global_step"] == 2
    train.main([*args, "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2", "--ckpt_path", "last"])
    assert torch.load(ckpt, weights_only=True)["global_step"] == 4  # 2 steps restored, 2 more in epoch 2


def test_mnist_recipe_reduces_the_training_loss(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=False)
    datamodule = MNISTDataModule(data_root=str(tmp_path), batch_size=4)
    datamodule.setup("fit")
    images, labels = zip(*datamodule.train_set)
    x, y = torch.stack(images), torch.tensor(labels)
    pl.seed_everything(0)
    model = ImageClassifier(**_yaml("model", "mnist_mlp")["model"], image_spec=datamodule.image_spec.to_dict())

    def loss() -> float:
        with torch.no_grad():
            return float(F.cross_entropy(model.eval()(x), y))

    before = loss()
    trainer = pl.Trainer(max_epochs=5, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         default_root_dir=tmp_path)
    trainer.fit(model, datamodule=datamodule)
    assert trainer.global_step == 15 and loss() < 0.9 * before


def _optimizer_and_schedule(experiment_config: dict) -> tuple[torch.optim.Optimizer, list[float]]:
    """The experiment's optimizer and its learning rate in each epoch, from ``configure_optimizers``."""
    max_epochs = experiment_config["trainer"]["max_epochs"]
    spec = {"size": 8, "channels": 1, "mean": [0.0], "std": [1.0], "class_names": list("0123456789")}
    # The schedule does not depend on the backbone: a small one keeps this fast (it has hidden weights too).
    model = ImageClassifier(**{**experiment_config["model"], "backbone": "hendrycks_mlp", "image_spec": spec})
    model.trainer = pl.Trainer(max_epochs=max_epochs, logger=False, enable_checkpointing=False,
                               enable_progress_bar=False)
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "epoch"
    lrs = []
    for _ in range(max_epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return optimizer, lrs


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_recipe_learning_rate_schedule(parser, experiment: str) -> None:
    config = _parse(parser, _config("experiment", experiment))
    optimizer, lrs = _optimizer_and_schedule(config)
    max_epochs, _, weight_decay, milestones = RECIPES[config["model"]["backbone"]]
    base = 1e-3 if experiment == "mlp_mnist" else 0.1
    expected = [base * 0.1 ** sum(epoch >= m for m in milestones) for epoch in range(max_epochs)]
    assert lrs == pytest.approx(expected, rel=1e-9)
    group = optimizer.param_groups[0]
    if experiment == "mlp_mnist":
        assert isinstance(optimizer, torch.optim.Adam)
    else:
        assert isinstance(optimizer, torch.optim.SGD) and group["nesterov"] and group["momentum"] == 0.9
        assert len(optimizer.param_groups) == 1 and group["weight_decay"] == weight_decay


def test_weight_decay_scope_hidden_weights_decays_only_hidden_weights(parser) -> None:
    optimizer, _ = _optimizer_and_schedule(_parse(parser, _config("experiment", "mlp_mnist")))
    decay, rest = optimizer.param_groups
    assert (decay["weight_decay"], rest["weight_decay"]) == (1e-5, 0.0)
    assert [p.shape for p in decay["params"]] == [(256, 64), (256, 256), (256, 256)]  # the hidden layers' weights
    assert [p.shape for p in rest["params"]] == [(256,), (256,), (256,), (10, 256), (10,)]
    # With zero loss gradients, only the decay moves parameters: the hidden weights and nothing else.
    before = [[p.detach().clone() for p in g["params"]] for g in (decay, rest)]
    for group in (decay, rest):
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    assert all(not torch.equal(p, b) for p, b in zip(decay["params"], before[0]))
    assert all(torch.equal(p, b) for p, b in zip(rest["params"], before[1]))


def test_resnet9_cifar10_jpeg_recipe_trains(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The CPU recipe (configs/experiment/resnet9_cifar10_jpeg.yaml) trains a few batches on a class-folder copy:
    half-width ResNet-9 at the precision this CPU runs fast (``precision: auto``, said in one line) with
    channels_last, SGD and the per-step one-cycle schedule."""
    cli = train.build_cli(["--config", _config("experiment", "resnet9_cifar10_jpeg"),
                           *_quick_args(tmp_path, "cifar10_jpeg"), "--data.init_args.batch_size", "4",
                           "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
                           "--trainer.limit_val_batches", "0", "--skip_test", "true"], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    model, trainer = cli.model, cli.trainer
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("precision: auto -> ")]
    assert (model.hparams.backbone, trainer.precision, model.hparams.channels_last) == ("resnet9_half",
                                                                                        line.split()[3], True)
    assert trainer.global_step == 3 and torch.isfinite(trainer.callback_metrics["train/loss_epoch"])
    assert next(model.parameters()).dtype == torch.float32  # autocast: the weights stay float32
    scheduler = trainer.lr_scheduler_configs[0]
    assert scheduler.interval == "step"
    factor = scheduler.scheduler.lr_lambdas[0]
    assert (factor.func, factor.keywords) == (one_cycle_factor, {"total_steps": 3, "peak_fraction": 0.2})
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.4 * one_cycle_factor(3, 3, 0.2))


def test_one_cycle_factor_is_pages_piecewise_linear_schedule() -> None:
    """Against numpy's interpolation of (0, 0), (p, 1), (1, 0) at the middle of each step (1e-12)."""
    for total, peak in ((100, 0.2), (7, 0.5), (1, 0.3)):
        t = (np.arange(total) + 0.5) / total
        expected = np.interp(t, [0, peak, 1], [0, 1, 0])
        np.testing.assert_allclose([one_cycle_factor(k, total, peak) for k in range(total)], expected, atol=1e-12)
    with pytest.raises(ValueError, match="lr_peak_fraction"):
        ImageClassifier(lr_schedule="one_cycle", lr_peak_fraction=1.0)
    with pytest.raises(ValueError, match="unknown lr_schedule"):
        ImageClassifier(lr_schedule="cosine")
