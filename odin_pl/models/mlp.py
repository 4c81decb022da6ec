"""Fully connected classifiers: Hendrycks & Gimpel's MNIST network and its relatives."""

from __future__ import annotations

from typing import Sequence

from timm.models import register_model
from torch import Tensor, nn

from odin_pl.models._factory import TimmClassifier, build


class MLP(TimmClassifier):
    """Flatten, then hidden Linear + GELU(tanh) layers, then a linear classifier (timm model API).

    With ``in_chans=1, img_size=28, hidden=(256, 256, 256)`` this is the MNIST classifier of Hendrycks & Gimpel
    (784-256-256-256-10, 335,114 parameters).
    """

    classifier_name = "head"

    def __init__(self, num_classes: int = 10, in_chans: int = 1, img_size: int = 28,
                 hidden: Sequence[int] = (256, 256, 256)) -> None:
        super().__init__()
        widths = [in_chans * img_size * img_size, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(width_in, width_out), nn.GELU(approximate="tanh")]
        self.features = nn.Sequential(*layers)
        self.num_features = widths[-1]
        self.init_classifier(num_classes)

    def hidden_weights(self) -> list[nn.Parameter]:
        """Weights of the hidden layers (the ones the original recipe's L2 penalty covers)."""
        return [m.weight for m in self.features if isinstance(m, nn.Linear)]

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)



@register_model
def hendrycks_mlp(pretrained: bool = False, *, in_chans: int = 1, img_size: int = 28, **kwargs) -> MLP:
    """Hendrycks & Gimpel's MNIST MLP: three hidden layers of 256 GELU units (any input size)."""
    return build(MLP, pretrained, in_chans=in_chans, img_size=img_size, hidden=(256, 256, 256), **kwargs)


__all__ = ["MLP", "hendrycks_mlp"]
