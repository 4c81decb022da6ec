"""CIFAR DenseNet-BC (Huang et al., 2017), the ODIN paper's DenseNet: depth 100, growth rate 12, compression 0.5.

Module and parameter names follow the ODIN release's ``densenet.py`` (``conv1``, ``block1.layer.0.bn1``, ``trans1``,
..., ``bn1``, ``fc``), so its ``densenet10.pth`` / ``densenet100.pth`` state dicts map onto these models key for key.
"""

from __future__ import annotations

import math

import torch
from timm.models import register_model
from torch import Tensor, nn
from torch.nn import functional as F

from odin_pl.models._factory import TimmClassifier, build, init_conv_bn
from odin_pl.errors import UserError


class Bottleneck(nn.Module):
    """BN-ReLU-conv1x1 (4k channels) then BN-ReLU-conv3x3 (k channels); the k new channels join the input."""

    def __init__(self, in_planes: int, growth_rate: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        inter_planes = 4 * growth_rate
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, inter_planes, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(inter_planes)
        self.conv2 = nn.Conv2d(inter_planes, growth_rate, kernel_size=3, padding=1, bias=False)
        self.drop = nn.Dropout(drop_rate)

    def forward(self, x: Tensor) -> Tensor:
        out = self.drop(self.conv1(F.relu(self.bn1(x))))
        out = self.drop(self.conv2(F.relu(self.bn2(out))))
        return torch.cat([x, out], dim=1)


class DenseBlock(nn.Module):
    """``num_layers`` bottleneck layers; the output has ``in_planes + num_layers * growth_rate`` channels."""

    def __init__(self, num_layers: int, in_planes: int, growth_rate: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.layer = nn.Sequential(*(Bottleneck(in_planes + i * growth_rate, growth_rate, drop_rate)
                                     for i in range(num_layers)))

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class Transition(nn.Module):
    """BN-ReLU-conv1x1 to ``out_planes`` channels, then 2x2 average pooling."""

    def __init__(self, in_planes: int, out_planes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=1, bias=False)
        self.drop = nn.Dropout(drop_rate)

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(self.drop(self.conv1(F.relu(self.bn1(x)))), 2)


class DenseNet(TimmClassifier):
    """CIFAR DenseNet-BC with three dense blocks (timm model API).

    A 3x3 conv to ``2 * growth_rate`` channels, three dense blocks of ``(depth - 4) // 6`` bottleneck layers with
    compressing transitions between them, then BN-ReLU, global average pooling and a linear classifier.
    ``depth=100, growth_rate=12`` has 769,162 parameters for 10 classes and 800,032 for 100 classes (paper: 0.8M).
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, depth: int = 100, growth_rate: int = 12,
                 compression: float = 0.5, drop_rate: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise UserError(f"DenseNet-BC depth must be 6n+4, got {depth}")
        num_layers = (depth - 4) // 6
        planes = 2 * growth_rate
        self.conv1 = nn.Conv2d(in_chans, planes, kernel_size=3, padding=1, bias=False)
        self.block1 = DenseBlock(num_layers, planes, growth_rate, drop_rate)
        planes += num_layers * growth_rate
        self.trans1 = Transition(planes, math.floor(planes * compression), drop_rate)
        planes = math.floor(planes * compression)
        self.block2 = DenseBlock(num_layers, planes, growth_rate, drop_rate)
        planes += num_layers * growth_rate
        self.trans2 = Transition(planes, math.floor(planes * compression), drop_rate)
        planes = math.floor(planes * compression)
        self.block3 = DenseBlock(num_layers, planes, growth_rate, drop_rate)
        planes += num_layers * growth_rate
        self.bn1 = nn.BatchNorm2d(planes)
        self.num_features = planes
        self.init_classifier(num_classes)
        init_conv_bn(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.trans1(self.block1(self.conv1(x)))
        x = self.trans2(self.block2(x))
        return F.relu(self.bn1(self.block3(x)))



@register_model
def densenet_bc_100(pretrained: bool = False, **kwargs) -> DenseNet:
    """DenseNet-BC-100 (k=12) for 32x32 images, as in the ODIN paper."""
    return build(DenseNet, pretrained, depth=100, growth_rate=12, **kwargs)


__all__ = ["DenseNet", "densenet_bc_100"]
