"""Shared plumbing for the models that odin-pl registers in timm's registry."""

from __future__ import annotations

from typing import Any, Callable

from torch import Tensor, nn
from odin_pl.errors import UserError

# Arguments timm.create_model always passes to an entrypoint; the project's models have no pretrained weights.
_TIMM_ONLY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def build(model_cls: Callable[..., nn.Module], pretrained: bool, **kwargs: Any) -> nn.Module:
    """Build ``model_cls(**kwargs)`` for a timm entrypoint, refusing ``pretrained=True``."""
    if pretrained:
        raise UserError(f"{model_cls.__name__} has no pretrained weights in odin-pl; train it with train.py "
                        "or load a state_dict with evaluate.py --weights")
    for key in _TIMM_ONLY_KWARGS:
        kwargs.pop(key, None)
    return model_cls(**kwargs)


def linear_classifier(num_features: int, num_classes: int) -> nn.Module:
    """Linear classifier with zero bias (PyTorch's default weight init), or Identity for ``num_classes=0``."""
    if num_classes <= 0:
        return nn.Identity()
    fc = nn.Linear(num_features, num_classes)
    nn.init.zeros_(fc.bias)
    return fc


def init_conv_bn(model: nn.Module) -> None:
    """The ResNet/DenseNet papers' init: He normal (fan out) convolutions, BatchNorm weight 1 and bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class TimmClassifier(nn.Module):
    """timm's classifier API for the project's models.

    A subclass sets ``num_features``, calls ``init_classifier`` and defines ``forward_features``; feature maps
    [B, C, H, W] are globally pooled (``global_pool``: ``"avg"`` the mean, ``"max"`` the maximum over H x W),
    flat features [B, C] go to the classifier as they are. The classifier lives in the attribute named by
    ``classifier_name`` (``fc`` keeps released checkpoints' keys).
    """

    classifier_name = "fc"
    global_pool = "avg"
    num_features: int
    num_classes: int

    def init_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        setattr(self, self.classifier_name, linear_classifier(self.num_features, num_classes))

    def forward_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if x.dim() == 4:
            x = x.amax(dim=(2, 3)) if self.global_pool == "max" else x.mean(dim=(2, 3))
        return x if pre_logits else self.get_classifier()(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return getattr(self, self.classifier_name)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool not in (None, self.global_pool):
            raise UserError(f"{type(self).__name__} only supports global_pool={self.global_pool!r}, "
                            f"got {global_pool!r}")
        self.init_classifier(num_classes)
