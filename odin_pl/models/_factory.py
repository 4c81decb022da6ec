"""Shared plumbing for the models that odin-pl registers in timm's registry."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

# Arguments timm.create_model always passes to an entrypoint; the project's models have no pretrained weights.
_TIMM_ONLY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def build(model_cls: Callable[..., nn.Module], pretrained: bool, **kwargs: Any) -> nn.Module:
    """Build ``model_cls(**kwargs)`` for a timm entrypoint, refusing ``pretrained=True``."""
    if pretrained:
        raise ValueError(f"{model_cls.__name__} has no pretrained weights in odin-pl; train it with train.py "
                         "or load a state_dict with evaluate.py --weights")
    for key in _TIMM_ONLY_KWARGS:
        kwargs.pop(key, None)
    return model_cls(**kwargs)
