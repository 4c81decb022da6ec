"""Fully connected classifiers: Hendrycks & Gimpel's MNIST network and its relatives."""

from __future__ import annotations

from typing import Sequence

from timm.models import register_model
from torch import Tensor, nn

from odin_pl.models._factory import build


class MLP(nn.Module):
    """Flatten, then hidden Linear + GELU(tanh) layers, then a linear classifier (timm model API).

    With ``in_chans=1, img_size=28, hidden=(256, 256, 256)`` this is the MNIST classifier of Hendrycks & Gimpel
    (784-256-256-256-10, 335,114 parameters).
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, img_size: int = 28,
                 hidden: Sequence[int] = (256, 256, 256)) -> None:
        super().__init__()
        widths = [in_chans * img_size * img_size, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(width_in, width_out), nn.GELU(approximate="tanh")]
        self.features = nn.Sequential(*layers)
        self.num_features = widths[-1]
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def hidden_weights(self) -> list[nn.Parameter]:
        """Weights of the hidden layers (the ones the original recipe's L2 penalty covers)."""
        return [m.weight for m in self.features if isinstance(m, nn.Linear)]

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


@register_model
def hendrycks_mlp(pretrained: bool = False, *, in_chans: int = 1, img_size: int = 28, **kwargs) -> MLP:
    """Hendrycks & Gimpel's MNIST MLP: three hidden layers of 256 GELU units (any input size)."""
    return build(MLP, pretrained, in_chans=in_chans, img_size=img_size, hidden=(256, 256, 256), **kwargs)


__all__ = ["MLP", "hendrycks_mlp"]
