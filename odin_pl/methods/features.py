"""Penultimate features of a classifier, its last layer, and the fits of the fitted methods (DESIGN, "Other
detectors" and "More detectors").

h(x) = ``forward_head(forward_features(x), pre_logits=True)`` of a model with timm's classifier API (every model
odin_pl registers, and timm's own), and logits = g(h) with g = ``get_classifier()`` (W [N, D], b [N]; b = 0 when
it has none). A :class:`FeatureModel` checks once, on the first batch it sees, that these logits reproduce
``model(x)``; a model without the API, or whose logits differ, is refused for the feature methods with a message
saying why. :func:`feature_model` keeps one per model, so that the check runs once per model.
"""

from __future__ import annotations

import weakref
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
    raise UserError(f"the feature methods (those scoring the penultimate features) need them, and "
                    f"{type(model).__name__} has no {', '.join(TIMM_API)} (timm's classifier API), nor a backbone "
                    "`net` that has: use an odin_pl or timm model, or drop these methods from --methods")


class Classifier:
    """The last layer g of a model: ``g(h)`` runs the module; ``weight`` W [N, D] and ``bias`` b [N] (zeros when it
    has none) are its parameters, detached, for the methods that use them directly."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, h: Tensor) -> Tensor:
        return self.module(h)

    @property
    def weight(self) -> Tensor:
        weight = getattr(self.module, "weight", None)
        if not isinstance(weight, Tensor) or weight.dim() != 2:
            raise UserError(f"the classifier of this model ({type(self.module).__name__}) has no weight matrix "
                            "W [N, D] (a linear layer): a method that uses W cannot score it; drop it from --methods")
        return weight.detach()

    @property
    def bias(self) -> Tensor:
        bias = getattr(self.module, "bias", None)
        return bias.detach() if isinstance(bias, Tensor) else self.weight.new_zeros(self.weight.shape[0])


class FeatureModel:
    """h(x) and the classifier of ``model`` (an eval-mode network; see the module docstring).

    ``model(x)`` (the check, on the first batch) and ``features`` run on the same normalized images.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.net, self._prepare = _timm_net(model)
        self.classifier = Classifier(self.net.get_classifier())
        self.checked = False

    def features(self, x: Tensor, on_feature_maps: Callable[[Tensor], None] | None = None) -> Tensor:
        """h(x) [B, D] of normalized images x; ``on_feature_maps`` receives forward_features' output."""
        x = self._prepare(x) if self._prepare is not None else x
        maps = self.net.forward_features(x)
        if on_feature_maps is not None:
            on_feature_maps(maps)
        h = self.net.forward_head(maps, pre_logits=True)
        if h.dim() != 2:
            raise UserError(f"forward_head(..., pre_logits=True) of {type(self.net).__name__} gives features of "
                            f"shape {tuple(h.shape)}, not [B, D]: the feature methods need flat features")
        return h

    def forward(self, x: Tensor, on_feature_maps: Callable[[Tensor], None] | None = None) -> tuple[Tensor, Tensor]:
        """(h(x), classifier(h(x))) of normalized images x, unchecked (see :meth:`check_once`)."""
        h = self.features(x, on_feature_maps)
        return h, self.classifier(h)

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(h(x), classifier(h(x))) of normalized images x; the first call checks the logits against model(x)."""
        h, logits = self.forward(x)
        self.check_once(x, logits)
        return h, logits

    def check_once(self, x: Tensor, logits: Tensor) -> None:
        """Check (once per FeatureModel) that the logits ``forward`` gave for x reproduce model(x)."""
        if not self.checked:
            self._check(x, logits)

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
                            "penultimate features; drop the feature methods from --methods for this model")
        self.checked = True


_FEATURE_MODELS: weakref.WeakKeyDictionary[nn.Module, FeatureModel] = weakref.WeakKeyDictionary()


def feature_model(model: nn.Module) -> FeatureModel:
    """The :class:`FeatureModel` of ``model``, made (and so checked) once per model."""
    if model not in _FEATURE_MODELS:
        _FEATURE_MODELS[model] = FeatureModel(model)
    return _FEATURE_MODELS[model]


@dataclass(frozen=True)
class Fits:
    """The fits of a run's fitted methods, by method name."""

    tensors: Mapping[str, Fit]

    def of(self, method: str) -> Fit:
        """The fit of ``method``, or a KeyError that says how to make one."""
        if method not in self.tensors:
            raise KeyError(f"no fit of method {method!r} (fits of: {', '.join(self.tensors) or 'none'}); fit it on "
                           "the training images with odin_pl.protocol.fits.prepare_fits, as evaluate.py does")
        return self.tensors[method]
