"""A small CIFAR convnet that trains on a laptop CPU in minutes (for demos and CPU-only real-data runs)."""

from __future__ import annotations

from typing import Sequence

from timm.models import register_model
from torch import Tensor, nn

from odin_pl.models._factory import TimmClassifier, build


class SmallCNN(TimmClassifier):
    """Blocks of conv3x3-BN-ReLU then 2x2 max-pool (widths 24, 48, 96, 192), global average pool, linear
    classifier (timm model API). 0.22M parameters and about 9M multiply-adds per 32x32 image."""

    classifier_name = "head"

    def __init__(self, num_classes: int = 10, in_chans: int = 3, widths: Sequence[int] = (24, 48, 96, 192)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width_in, width_out in zip([in_chans, *widths[:-1]], widths):
            layers += [nn.Conv2d(width_in, width_out, 3, padding=1, bias=False), nn.BatchNorm2d(width_out),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers[:-1])  # no pooling after the last block: global pooling follows
        self.num_features = widths[-1]
        self.init_classifier(num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)



@register_model
def small_cnn(pretrained: bool = False, **kwargs) -> SmallCNN:
    """SmallCNN with widths 24-48-96-192."""
    return build(SmallCNN, pretrained, **kwargs)
