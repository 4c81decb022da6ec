"""A small CIFAR convnet that trains on a laptop CPU in minutes (for demos and CPU-only real-data runs)."""

from __future__ import annotations

from typing import Sequence

from timm.models import register_model
from torch import Tensor, nn

from odin_pl.models._factory import build


class SmallCNN(nn.Module):
    """Blocks of conv3x3-BN-ReLU then 2x2 max-pool (widths 24, 48, 96, 192), global average pool, linear
    classifier (timm model API). 0.22M parameters and about 9M multiply-adds per 32x32 image."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, widths: Sequence[int] = (24, 48, 96, 192)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width_in, width_out in zip([in_chans, *widths[:-1]], widths):
            layers += [nn.Conv2d(width_in, width_out, 3, padding=1, bias=False), nn.BatchNorm2d(width_out),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers[:-1])  # no pooling after the last block: global pooling follows
        self.num_features = widths[-1]
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


@register_model
def small_cnn(pretrained: bool = False, **kwargs) -> SmallCNN:
    """SmallCNN with widths 24-48-96-192."""
    return build(SmallCNN, pretrained, **kwargs)
