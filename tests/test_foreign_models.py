"""Weights of other models: plain state_dicts of registered or timm models, and the ODIN release's pickled models.

The release's files cannot be downloaded here, so the tests build tiny module trees with the release's class,
module and parameter names (DenseNet3 / WideResNet in modules ``densenet`` / ``wideresnet``), save them as whole
pickled models (without ``num_batches_tracked``, as PyTorch 0.3 did) and as state_dicts, and load them with the
release's classes no longer importable.
"""

from __future__ import annotations

import fractions
import json
import sys
import types

import pytest
import torch
from torch import nn

import evaluate
from data_factories import flip_a_tensor_bit
from datamodules import DigitsDataModule
from odin_pl.errors import UserError
from odin_pl.training.checkpoint import build_datamodule, load_model, read_checkpoint
from odin_pl.training.convert import check_fits, convert_state_dict, load_foreign_model, read_weights
from odin_pl.models import DenseNet, WideResNet
from odin_pl.training.module import ImageClassifier
from odin_pl.spec import ImageSpec

RELEASE_CLASSES = {"densenet": ("DenseNet3", "DenseBlock", "BottleneckBlock", "TransitionBlock"),
                   "wideresnet": ("WideResNet", "NetworkBlock", "BasicBlock")}


@pytest.fixture()
def release_classes():
    """Empty nn.Module classes named as in the release, importable only while the test builds and saves."""
    modules = {}
    for module_name, class_names in RELEASE_CLASSES.items():
        module = types.ModuleType(module_name)
        for name in class_names:
            setattr(module, name, type(name, (nn.Module,), {"__module__": module_name}))
        modules[module_name] = module
    sys.modules.update(modules)
    yield {name: getattr(m, name) for m in modules.values() for name in RELEASE_CLASSES[m.__name__]}
    for module_name in modules:
        sys.modules.pop(module_name, None)


def _node(cls: type, **children: nn.Module) -> nn.Module:
    node = cls()
    for name, child in children.items():
        setattr(node, name, child)
    return node


def _release_densenet(c: dict, growth: int = 2, depth: int = 10, num_classes: int = 10) -> nn.Module:
    """The release's DenseNet3 module tree (bottleneck, compression 0.5) for a small depth and growth rate."""
    n, planes, blocks = (depth - 4) // 6, 2 * growth, {}
    blocks["conv1"] = nn.Conv2d(3, planes, 3, padding=1, bias=False)
    for b in (1, 2, 3):
        layers = [_node(c["BottleneckBlock"], bn1=nn.BatchNorm2d(planes + i * growth), relu=nn.ReLU(),
                        conv1=nn.Conv2d(planes + i * growth, 4 * growth, 1, bias=False),
                        bn2=nn.BatchNorm2d(4 * growth), conv2=nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False))
                  for i in range(n)]
        blocks[f"block{b}"] = _node(c["DenseBlock"], layer=nn.Sequential(*layers))
        planes += n * growth
        if b < 3:
            blocks[f"trans{b}"] = _node(c["TransitionBlock"], bn1=nn.BatchNorm2d(planes), relu=nn.ReLU(),
                                        conv1=nn.Conv2d(planes, planes // 2, 1, bias=False))
            planes //= 2
    return _node(c["DenseNet3"], **blocks, bn1=nn.BatchNorm2d(planes), relu=nn.ReLU(),
                 fc=nn.Linear(planes, num_classes))


def _release_wrn(c: dict, depth: int = 10, widen: int = 1, num_classes: int = 10) -> nn.Module:
    """The release's WideResNet module tree (``convShortcut`` where the width changes)."""
    n, widths, groups = (depth - 4) // 6, [16, 16 * widen, 32 * widen, 64 * widen], {}
    for g in (1, 2, 3):
        layers = []
        for i in range(n):
            in_planes, out_planes = widths[g - 1] if i == 0 else widths[g], widths[g]
            stride = 1 if g == 1 or i > 0 else 2
            block = _node(c["BasicBlock"], bn1=nn.BatchNorm2d(in_planes), relu1=nn.ReLU(),
                          conv1=nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False),
                          bn2=nn.BatchNorm2d(out_planes), relu2=nn.ReLU(),
                          conv2=nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False))
            if in_planes != out_planes:
                block.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)
            layers.append(block)
        groups[f"block{g}"] = _node(c["NetworkBlock"], layer=nn.Sequential(*layers))
    return _node(c["WideResNet"], conv1=nn.Conv2d(3, 16, 3, padding=1, bias=False), **groups,
                 bn1=nn.BatchNorm2d(widths[3]), relu=nn.ReLU(), fc=nn.Linear(widths[3], num_classes))


def _as_pytorch_03(model: nn.Module) -> nn.Module:
    """Random weights and running statistics, and BatchNorm layers without ``num_batches_tracked``."""
    torch.manual_seed(0)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            del module._buffers["num_batches_tracked"]
    return model


@pytest.mark.filterwarnings("ignore:Couldn't retrieve source code")
@pytest.mark.parametrize("arch", ["densenet", "wrn"])
def test_release_files_convert_onto_the_project_models(arch: str, release_classes, tmp_path) -> None:
    build, ours = {"densenet": (_release_densenet, DenseNet(depth=10, growth_rate=2)),
                   "wrn": (_release_wrn, WideResNet(depth=10, widen_factor=1))}[arch]
    release = _as_pytorch_03(build(release_classes))
    expected = {k.replace("convShortcut", "shortcut"): v.clone() for k, v in release.state_dict().items()}
    assert any("convShortcut" in k for k in release.state_dict()) == (arch == "wrn")
    files = {"whole": tmp_path / "whole.pth", "legacy": tmp_path / "legacy.pth", "state_dict": tmp_path / "sd.pth"}
    torch.save(release, files["whole"])
    torch.save(release, files["legacy"], _use_new_zipfile_serialization=False)  # the 2017 file format
    torch.save(release.state_dict(), files["state_dict"])
    for module_name in RELEASE_CLASSES:  # the release's code is not importable when loading
        del sys.modules[module_name]
    for kind, path in files.items():
        if kind == "state_dict":
            state_dict = read_weights(path)
        else:
            with pytest.raises(ValueError, match="--trust_pickle"):
                read_weights(path)
            with pytest.warns(UserWarning, match="arbitrary code"):
                state_dict = read_weights(path, trust_pickle=True)
        converted = convert_state_dict(state_dict, ours)
        check_fits(converted, ours, arch)
        ours.load_state_dict(converted)
        for key, value in ours.state_dict().items():
            if key.endswith("num_batches_tracked"):
                assert value.item() == 0
            else:
                assert torch.equal(value, expected[key]), (kind, key)
    # DataParallel's "module." prefix is dropped too.
    prefixed = {f"module.{k}": v for k, v in read_weights(files["state_dict"]).items()}
    check_fits(convert_state_dict(prefixed, ours), ours, arch)


def test_weights_that_do_not_fit_give_a_clear_error(release_classes, tmp_path) -> None:
    torch.save(_release_densenet(release_classes).state_dict(), tmp_path / "sd.pth")
    wider = DenseNet(depth=10, growth_rate=4)
    with pytest.raises(ValueError, match=r"do not fit DenseNet-BC k=4: .*shape \(weights vs model\) \(\d+\): conv1"):
        check_fits(convert_state_dict(read_weights(tmp_path / "sd.pth"), wider), wider, "DenseNet-BC k=4")
    with pytest.raises(ValueError, match=r"do not fit WRN: missing \(\d+\): conv1.weight, block1.layer.0.bn1"):
        check_fits({}, WideResNet(depth=10, widen_factor=2), "WRN")
    torch.save({"weights": [1, 2]}, tmp_path / "list.pth")
    with pytest.raises(ValueError, match="is not a state_dict"):
        read_weights(tmp_path / "list.pth")
    (tmp_path / "garbage.pth").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read weights"):
        read_weights(tmp_path / "garbage.pth")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_weights(tmp_path / "missing.pth")


def test_a_timm_model_state_dict_loads(tmp_path) -> None:
    spec = ImageSpec(size=16, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3, class_names=tuple("abcd"))
    source = ImageClassifier("test_resnet", image_spec=spec.to_dict()).net
    torch.save(source.state_dict(), tmp_path / "w.pth")
    model = load_foreign_model("test_resnet", tmp_path / "w.pth", spec)
    assert not model.training and model.hparams.num_classes == 4
    for key, value in source.state_dict().items():
        assert torch.equal(model.net.state_dict()[key], value)


def test_evaluate_a_plain_state_dict_equals_the_checkpoint(quickstart_ckpt: str, tmp_path) -> None:
    checkpoint = torch.load(quickstart_ckpt, weights_only=True)
    net = {k[len("net."):]: v for k, v in checkpoint["state_dict"].items()}
    torch.save(net, tmp_path / "mlp.pth")
    options = ["--ood.sets", "uniform", "--ood.num_images", "60", "--tuning.mode", "fixed", "--tuning.temperature",
               "1000", "--tuning.epsilon", "0.002", "--output.logger", "false"]
    reference = evaluate.main(["protocol", "--ckpt", quickstart_ckpt, "--output.dir", str(tmp_path / "ckpt"), *options])
    digits = ["--data", "datamodules.DigitsDataModule"]
    foreign = evaluate.main(["protocol", "--model", "hendrycks_mlp", "--weights", str(tmp_path / "mlp.pth"), *digits,
                             "--output.dir", str(tmp_path / "foreign"), *options])
    assert foreign.result.records == reference.result.records
    saved = json.loads((tmp_path / "foreign" / "results.json").read_text())
    assert saved["checkpoint"] == str(tmp_path / "mlp.pth")
    assert (tmp_path / "foreign" / "detectors" / "fixed.odin.json").exists()
    # A whole pickled model needs --trust_pickle.
    whole = tmp_path / "whole.pth"
    torch.save(load_model(read_checkpoint(quickstart_ckpt)).net, whole)
    with pytest.raises(ValueError, match="pass --trust_pickle"):
        evaluate.main(["--model", "hendrycks_mlp", "--weights", str(whole), "--dataset", "digits", *options])
    with pytest.warns(UserWarning, match="arbitrary code"):
        trusted = evaluate.main(["--model", "hendrycks_mlp", "--weights", str(whole), "--dataset", "digits",
                                 "--trust_pickle", "true", "--output.dir", str(tmp_path / "trusted"), *options])
    assert trusted.result.records == reference.result.records


def test_evaluate_foreign_model_errors_are_clear(quickstart_ckpt: str, tmp_path) -> None:
    checkpoint = torch.load(quickstart_ckpt, weights_only=True)
    torch.save({k[len("net."):]: v for k, v in checkpoint["state_dict"].items()}, tmp_path / "mlp.pth")
    weights = ["--weights", str(tmp_path / "mlp.pth")]
    out = ["--output.dir", str(tmp_path / "out"), "--output.logger", "false"]
    with pytest.raises(ValueError, match="do not fit small_cnn with 10 classes and 1 input channel"):
        evaluate.main(["--model", "small_cnn", *weights, "--dataset", "digits", *out])
    with pytest.raises(ValueError, match="say what to evaluate: --ckpt PATH .* or all of --model NAME"):
        evaluate.main(["--model", "hendrycks_mlp", *weights, *out])
    with pytest.raises(ValueError, match="give either --ckpt or --model/--weights"):
        evaluate.main(["--ckpt", quickstart_ckpt, "--model", "hendrycks_mlp", *weights, "--dataset", "digits", *out])
    with pytest.raises(ValueError, match="unknown in-distribution data set 'svhn'; use one of cifar10, cifar100"):
        evaluate.main(["--model", "hendrycks_mlp", *weights, "--dataset", "svhn", *out])
    with pytest.raises(ValueError, match="unknown backbone 'no_such_net'"):
        evaluate.main(["--model", "no_such_net", *weights, "--dataset", "digits", *out])


# --- Files name no code and are checked whole (issue 29) -------------------------------------------------------

SPEC = ImageSpec(size=8, channels=1, mean=(0.5,), std=(0.25,), class_names=tuple("0123456789"))


def _checkpoint_file(path, datamodule_class: str, init_args: dict, **hparams) -> str:
    """A checkpoint that ``torch.load(weights_only=True)`` accepts, naming ``datamodule_class``."""
    torch.save({"state_dict": {}, "hyper_parameters": {"backbone": "hendrycks_mlp", "image_spec": SPEC.to_dict(),
                                                       **hparams},
                "odin_pl": {"datamodule_class": datamodule_class}, "datamodule_hyper_parameters": init_args}, path)
    return str(path)


def test_a_checkpoint_cannot_make_odin_pl_run_code(tmp_path, monkeypatch) -> None:
    """Before issue 29, ``build_datamodule`` imported and called any class path: this checkpoint ran
    ``subprocess.Popen(['touch', FILE])``, and a module outside ``datamodules`` ran its import-time code."""
    touched = tmp_path / "touched"
    ckpt = _checkpoint_file(tmp_path / "popen.ckpt", "subprocess.Popen", {"args": ["touch", str(touched)]})
    checkpoint = read_checkpoint(ckpt)
    with pytest.raises(UserError, match=r"popen.ckpt names the DataModule class 'subprocess.Popen'.*outside the "
                                        r"project's datamodules.*--trust_pickle true"):
        build_datamodule(checkpoint, ckpt)
    with pytest.raises(UserError, match="is not a LightningDataModule: refused"):  # trusted, still no Popen
        build_datamodule(checkpoint, ckpt, trust=True)
    (tmp_path / "side_effect29.py").write_text(f"open({str(tmp_path / 'imported')!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match="outside the project's datamodules"):
        build_datamodule(read_checkpoint(_checkpoint_file(tmp_path / "m.ckpt", "side_effect29.X", {})), "m.ckpt")
    assert not touched.exists() and not (tmp_path / "imported").exists()  # refused before the import
    with pytest.raises(UserError, match="not a class path"):
        build_datamodule(read_checkpoint(_checkpoint_file(tmp_path / "d.ckpt", "datamodules..x", {})))
    with pytest.raises(UserError, match="cannot be imported"):
        build_datamodule(read_checkpoint(_checkpoint_file(tmp_path / "n.ckpt", "datamodules.digits.Nope", {})))
    with pytest.raises(UserError, match="cannot be imported"):
        build_datamodule(read_checkpoint(_checkpoint_file(tmp_path / "o.ckpt", "datamodules.nowhere.X", {})))
    built = build_datamodule(read_checkpoint(_checkpoint_file(tmp_path / "ok.ckpt", "datamodules.digits."
                                                              "DigitsDataModule", {"batch_size": 5})))
    assert isinstance(built, DigitsDataModule) and built.batch_size == 5


def test_a_checkpoints_unknown_or_bad_arguments_are_one_clear_error(tmp_path) -> None:
    """Before issue 29: a raw TypeError (unknown hyperparameter or DataModule argument, a value of the wrong type)
    from deep inside the constructors."""
    digits = "datamodules.digits.DigitsDataModule"
    checkpoint = read_checkpoint(_checkpoint_file(tmp_path / "a.ckpt", digits, {"batch_sise": 5}))
    with pytest.raises(UserError, match=r"DigitsDataModule of a.ckpt has argument\(s\) 'batch_sise' that it does "
                                        r"not take \(did you mean batch_size\?\)"):
        build_datamodule(checkpoint, "a.ckpt")
    checkpoint = read_checkpoint(_checkpoint_file(tmp_path / "b.ckpt", digits, {"test_fraction": "half"}))
    with pytest.raises(UserError, match=r"cannot be built from its recorded arguments: TypeError"):
        build_datamodule(checkpoint, "b.ckpt")
    checkpoint = read_checkpoint(_checkpoint_file(tmp_path / "c.ckpt", digits, {}, num_clases=10))
    with pytest.raises(UserError, match=r"ImageClassifier\) has argument\(s\) 'num_clases' .*did you mean "
                                        r"num_classes\?"):
        load_model(checkpoint, "c.ckpt")


def test_a_bit_flipped_checkpoint_or_weights_file_is_refused(tmp_path) -> None:
    """Before issue 29 such files were read without a word (torch does not check the zip's CRC-32)."""
    weights = tmp_path / "w.pth"
    torch.save({"fc.weight": torch.ones(64)}, weights)
    flip_a_tensor_bit(weights)
    assert not torch.equal(torch.load(weights, weights_only=True)["fc.weight"], torch.ones(64))  # torch is silent
    with pytest.raises(UserError, match=r"weights file .*w.pth is damaged: its member .*/data/0 does not match the "
                                        r"CRC-32"):
        read_weights(weights)
    ckpt = tmp_path / "c.ckpt"
    torch.save({"state_dict": {"net.w": torch.ones(64)}, "hyper_parameters": {"image_spec": SPEC.to_dict()}}, ckpt)
    read_checkpoint(ckpt)
    flip_a_tensor_bit(ckpt)
    with pytest.raises(UserError, match=r"checkpoint .*c.ckpt is damaged"):
        read_checkpoint(ckpt)


def test_a_pickled_object_in_a_checkpoint_names_trust_pickle(tmp_path) -> None:
    """Before issue 29: "cannot read checkpoint ... UnpicklingError ..." with torch's advice, not our option."""
    ckpt = tmp_path / "p.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"image_spec": SPEC.to_dict(), "f": fractions.Fraction(1, 2)}},
               ckpt)
    with pytest.raises(UserError, match=r"p.ckpt holds pickled Python objects \(fractions.Fraction\).*pass "
                                        r"--trust_pickle true"):
        read_checkpoint(ckpt)
    with pytest.warns(UserWarning, match="arbitrary code"):
        assert read_checkpoint(ckpt, trust_pickle=True)["hyper_parameters"]["f"] == fractions.Fraction(1, 2)
