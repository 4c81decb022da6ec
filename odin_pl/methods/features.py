"""Penultimate features of a classifier and the fits of the methods that score them (DESIGN, "Other detectors").

h(x) = ``forward_head(forward_features(x), pre_logits=True)`` of a model with timm's classifier API (every model
odin_pl registers, and timm's own), and logits = the classifier (``get_classifier()``) applied to h. A
:class:`FeatureModel` checks once, on the first batch it sees, that these logits reproduce ``model(x)``; a model
without the API, or whose logits differ, is refused for the feature methods with a message saying why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import Tensor, nn
from odin_pl.errors import UserError

Fit = Mapping[str, Tensor]  # a method's statistics of the training features, by name (see Method.fit)
TIMM_API = ("forward_features", "forward_head", "get_classifier")
CHECK_ULPS = 1000  # the check's tolerance: 1000 units in the last place of the largest |logit| (at least of 1)


def _timm_net(model: nn.Module) -> tuple[nn.Module, Callable[[Tensor], Tensor] | None]:
    """The module with timm's classifier API (``model`` itself or its backbone ``model.net``, as in
    :class:`~odin_pl.training.module.ImageClassifier`) and the wrapper's input preparation (``prepare_input``), if
    any."""
    for net in (model, getattr(model, "net", None)):
        if isinstance(net, nn.Module) and all(callable(getattr(net, name, None)) for name in TIMM_API):
            return net, (getattr(model, "prepare_input", None) if net is not model else None)
    raise UserError(f"the feature methods (mahalanobis, react, knn) need the penultimate features, and "
                    f"{type(model).__name__} has no {', '.join(TIMM_API)} (timm's classifier API), nor a backbone "
                    "`net` that has: use an odin_pl or timm model, or drop these methods from --methods")


class FeatureModel:
    """h(x) and the classifier of ``model`` (an eval-mode network; see the module docstring).

    ``model(x)`` (the check, on the first batch) and ``features`` run on the same normalized images.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.net, self._prepare = _timm_net(model)
        self.classifier: nn.Module = self.net.get_classifier()
        self.checked = False

    def features(self, x: Tensor) -> Tensor:
        """h(x) [B, D] of normalized images x."""
        x = self._prepare(x) if self._prepare is not None else x
        h = self.net.forward_head(self.net.forward_features(x), pre_logits=True)
        if h.dim() != 2:
            raise UserError(f"forward_head(..., pre_logits=True) of {type(self.net).__name__} gives features of "
                            f"shape {tuple(h.shape)}, not [B, D]: the feature methods need flat features")
        return h

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(h(x), classifier(h(x))) of normalized images x; the first call checks the logits against model(x)."""
        h = self.features(x)
        logits = self.classifier(h)
        if not self.checked:
            self._check(x, logits)
        return h, logits

    def _check(self, x: Tensor, logits: Tensor) -> None:
        """Refuse the model unless classifier(h(x)) equals model(x) to CHECK_ULPS units in the last place."""
        with torch.no_grad():
            direct = self.model(x.detach())
        via_features = logits.detach()
        if direct.shape != via_features.shape:
            raise UserError(f"the feature methods cannot use this model: the classifier applied to its "
                            f"penultimate features gives logits of shape {tuple(via_features.shape)}, the model "
                            f"{tuple(direct.shape)}")
        tolerance = CHECK_ULPS * torch.finfo(direct.dtype).eps * max(1.0, float(direct.abs().max()))
        gap = float((via_features - direct).abs().max()) if direct.numel() else 0.0
        if not gap <= tolerance:
            raise UserError(f"the feature methods cannot use this model: get_classifier()(forward_head("
                            f"forward_features(x), pre_logits=True)) differs from model(x) by up to {gap:.3g} "
                            f"(tolerance {tolerance:.3g}), so its forward does more than the classifier on the "
                            "penultimate features; drop mahalanobis, react and knn from --methods for this model")
        self.checked = True


@dataclass(frozen=True)
class Fits:
    """What the fitted methods of a run score with: the model's :class:`FeatureModel` and each method's fit."""

    model: FeatureModel
    tensors: Mapping[str, Fit]

    def of(self, method: str) -> Fit:
        """The fit of ``method``, or a KeyError that says how to make one."""
        if method not in self.tensors:
            raise KeyError(f"no fit of method {method!r} (fits of: {', '.join(self.tensors) or 'none'}); fit it on "
                           "the training images with odin_pl.protocol.fits.prepare_fits, as evaluate.py does")
        return self.tensors[method]
