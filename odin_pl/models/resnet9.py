"""ResNet-9: the fast-training CIFAR-10 network of Page (2018, "How to train your ResNet", DAWNBench entry)."""

from __future__ import annotations

from typing import Sequence

from timm.models import register_model
from torch import Tensor, nn

from odin_pl.models._factory import TimmClassifier, build


def conv_bn_relu(width_in: int, width_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(width_in, width_out, 3, padding=1, bias=False), nn.BatchNorm2d(width_out),
                         nn.ReLU(inplace=True))


class Residual(nn.Module):
    """x + f(x) with f two conv3x3-BN-ReLU layers of the same width."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(width, width), conv_bn_relu(width, width))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ScaledLinear(nn.Linear):
    """logits = scale * (W h) (no bias): Page's final layer, whose 0.125 keeps the initial logits small. The scale
    belongs to the classifier, so ``classifier(forward_head(features, pre_logits=True))`` is ``model(x)``."""

    def __init__(self, in_features: int, out_features: int, scale: float) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) * self.scale

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale}"


class ResNet9(TimmClassifier):
    """prep: conv-BN-ReLU (w0); layer 1: conv-BN-ReLU (w1), 2x2 max-pool, residual block; layer 2: conv-BN-ReLU
    (w2), max-pool; layer 3: conv-BN-ReLU (w3), max-pool, residual block; global max pool over the 4x4 map; linear
    classifier without bias whose logits are scaled by ``logit_scale`` (timm model API, PyTorch's default init).
    Widths (64, 128, 256, 512): 6.6M parameters, 0.38G multiply-adds per 32x32 image; (32, 64, 128, 256) a quarter.
    """

    global_pool = "max"

    def __init__(self, num_classes: int = 10, in_chans: int = 3, widths: Sequence[int] = (64, 128, 256, 512),
                 logit_scale: float = 0.125) -> None:
        super().__init__()
        w0, w1, w2, w3 = widths
        pool = nn.MaxPool2d(2)
        self.features = nn.Sequential(
            conv_bn_relu(in_chans, w0),
            conv_bn_relu(w0, w1), pool, Residual(w1),
            conv_bn_relu(w1, w2), pool,
            conv_bn_relu(w2, w3), pool, Residual(w3),
        )
        self.num_features, self.logit_scale = w3, logit_scale
        self.init_classifier(num_classes)

    def init_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = ScaledLinear(self.num_features, num_classes, self.logit_scale) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)


@register_model
def resnet9(pretrained: bool = False, **kwargs) -> ResNet9:
    """ResNet-9 with Page's widths 64-128-256-512."""
    return build(ResNet9, pretrained, **kwargs)


@register_model
def resnet9_half(pretrained: bool = False, **kwargs) -> ResNet9:
    """ResNet-9 at half width, 32-64-128-256 (a quarter of the multiply-adds: the CPU recipe's network)."""
    return build(ResNet9, pretrained, **{"widths": (32, 64, 128, 256), **kwargs})
