"""The paper's CIFAR classifiers: timm registration, parameter counts, timm model API, init, gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
from torch import nn

import odin_pl  # noqa: F401  (registers the models with timm)
from odin_pl.models import DenseNet, ResNet9, WideResNet

CIFAR_MODELS = ["densenet_bc_100", "wrn_28_10", "wrn_40_4"]
MODEL_CLASSES = {"densenet_bc_100": DenseNet, "wrn_28_10": WideResNet, "wrn_40_4": WideResNet}
# Sizes the papers quote for 10 classes (Huang et al. / Zagoruyko & Komodakis), in parameters.
PAPER_SIZES = {"densenet_bc_100": 0.77e6, "wrn_28_10": 36.5e6, "wrn_40_4": 8.9e6}
EXACT_COUNTS = {("densenet_bc_100", 10): 769_162, ("densenet_bc_100", 100): 800_032,
                ("wrn_28_10", 10): 36_479_194, ("wrn_28_10", 100): 36_536_884,
                ("wrn_40_4", 10): 8_949_210, ("wrn_40_4", 100): 8_972_340}


def densenet_bc_count(depth: int, k: int, num_classes: int, in_chans: int = 3) -> int:
    """Parameters of a CIFAR DenseNet-BC (compression 0.5) from its layer formula: conv weights, BN affine, fc."""
    n = (depth - 4) // 6
    c = 2 * k
    total = in_chans * c * 9
    for block in range(3):
        for _ in range(n):
            total += 2 * c + c * 4 * k + 2 * 4 * k + 4 * k * k * 9
            c += k
        if block < 2:
            total += 2 * c + c * (c // 2)
            c //= 2
    return total + 2 * c + c * num_classes + num_classes


def wrn_count(depth: int, widen: int, num_classes: int, in_chans: int = 3) -> int:
    """Parameters of a CIFAR WRN from its layer formula: conv weights, BN affine, 1x1 shortcuts, fc."""
    n = (depth - 4) // 6
    widths = [16, 16 * widen, 32 * widen, 64 * widen]
    total = in_chans * 16 * 9
    for w_in, w_out in zip(widths[:-1], widths[1:]):
        total += 2 * w_in + w_in * w_out * 9 + 2 * w_out + w_out * w_out * 9 + w_in * w_out
        total += (n - 1) * (2 * (2 * w_out + w_out * w_out * 9))
    return total + 2 * widths[3] + widths[3] * num_classes + num_classes


FORMULAS = {"densenet_bc_100": lambda nc: densenet_bc_count(100, 12, nc),
            "wrn_28_10": lambda nc: wrn_count(28, 10, nc), "wrn_40_4": lambda nc: wrn_count(40, 4, nc)}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module", params=CIFAR_MODELS)
def model(request: pytest.FixtureRequest) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(request.param, num_classes=10).eval()


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_registered_with_timm(name: str) -> None:
    assert name in timm.list_models()
    assert isinstance(timm.create_model(name, num_classes=10), MODEL_CLASSES[name])


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_parameter_counts(name: str, num_classes: int) -> None:
    count = n_params(timm.create_model(name, num_classes=num_classes))
    assert count == FORMULAS[name](num_classes) == EXACT_COUNTS[name, num_classes]
    if num_classes == 10:
        assert abs(count - PAPER_SIZES[name]) / PAPER_SIZES[name] < 0.01


def test_shapes_and_feature_api(model: nn.Module) -> None:
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, model.num_features, 8, 8)
        assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)
        logits = model(x)
        assert logits.shape == (2, 10) and model.num_classes == 10
        torch.testing.assert_close(logits, model.forward_head(features))
    assert model.get_classifier() is model.fc
    assert model.fc.in_features == model.num_features


def test_reset_classifier() -> None:
    model = timm.create_model("densenet_bc_100", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    model.reset_classifier(5)
    assert model.num_classes == 5 and model(x).shape == (2, 5)
    model.reset_classifier(0)
    assert isinstance(model.get_classifier(), nn.Identity) and model(x).shape == (2, model.num_features)
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(10, global_pool="max")


@pytest.mark.parametrize("name", ["densenet_bc_100", "wrn_40_4"])
def test_single_channel_input(name: str) -> None:
    model = timm.create_model(name, num_classes=10, in_chans=1).eval()
    assert n_params(model) == FORMULAS[name](10) - 2 * model.conv1.out_channels * 9
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_wrn_dropout() -> None:
    x = torch.randn(2, 3, 32, 32)
    plain = timm.create_model("wrn_40_4", num_classes=10).train()
    torch.testing.assert_close(plain(x), plain(x))
    model = timm.create_model("wrn_40_4", num_classes=10, drop_rate=0.3)
    assert {m.p for m in model.modules() if isinstance(m, nn.Dropout)} == {0.3}
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    torch.testing.assert_close(model(x), model(x))


def test_backward_reaches_input_and_all_parameters(model: nn.Module) -> None:
    model.zero_grad()
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    model(x).logsumexp(dim=1).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.zero_grad()


def test_init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    assert torch.all(model.fc.bias == 0)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.bias is None for m in convs)
    big = max(convs, key=lambda m: m.weight.numel())  # He normal, fan-out mode: std = sqrt(2 / (k * k * c_out))
    expected = math.sqrt(2 / (big.kernel_size[0] * big.kernel_size[1] * big.out_channels))
    assert big.weight.std().item() == pytest.approx(expected, rel=0.05)


def test_parameter_names_follow_odin_release(model: nn.Module) -> None:
    keys = set(model.state_dict())
    assert {"conv1.weight", "block1.layer.0.bn1.weight", "block1.layer.0.conv1.weight",
            "block1.layer.0.bn2.running_mean", "block3.layer.0.conv2.weight", "bn1.weight", "fc.weight",
            "fc.bias"} <= keys
    if isinstance(model, DenseNet):
        assert {"trans1.bn1.weight", "trans1.conv1.weight", "trans2.conv1.weight"} <= keys
        assert "block1.layer.15.conv2.weight" in keys and "block1.layer.16.conv2.weight" not in keys


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_pretrained_refused(name: str) -> None:
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model(name, pretrained=True)


@pytest.mark.parametrize("model_cls", [DenseNet, WideResNet])
def test_bad_depth_refused(model_cls: type[nn.Module]) -> None:
    with pytest.raises(ValueError, match="6n\\+4"):
        model_cls(depth=27)


def resnet9_count(widths: tuple[int, int, int, int], num_classes: int, in_chans: int = 3) -> int:
    """Parameters of ResNet-9 from its layer formula: 8 conv3x3 weights, their BN affine pairs, a bias-free fc."""
    w0, w1, w2, w3 = widths
    convs = [(in_chans, w0), (w0, w1), (w1, w1), (w1, w1), (w1, w2), (w2, w3), (w3, w3), (w3, w3)]
    return sum(9 * a * b + 2 * b for a, b in convs) + w3 * num_classes


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name, widths", [("resnet9", (64, 128, 256, 512)), ("resnet9_half", (32, 64, 128, 256))])
def test_resnet9_registered_and_its_feature_path_is_the_model(name: str, widths: tuple, num_classes: int) -> None:
    """The feature path reproduces model(x) exactly; features are the global max over the last 4x4 map and the
    0.125 logit scale is in the classifier (float64 reference, 1e-12)."""
    assert name in timm.list_models()
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=num_classes).eval().double()
    assert isinstance(model, ResNet9) and n_params(model) == resnet9_count(widths, num_classes)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        maps = model.forward_features(x)
        h = model.forward_head(maps, pre_logits=True)
        assert maps.shape == (3, widths[3], 4, 4) and torch.equal(h, maps.amax(dim=(2, 3)))
        torch.testing.assert_close(model.get_classifier()(h), model(x), rtol=0, atol=0)
        reference = 0.125 * h.numpy() @ model.fc.weight.numpy().T
        np.testing.assert_allclose(model(x).numpy(), reference, rtol=1e-12, atol=1e-12)
    model.reset_classifier(0)
    assert isinstance(model.get_classifier(), nn.Identity)
    with pytest.raises(ValueError, match="global_pool='max'"):
        model.reset_classifier(10, global_pool="avg")
