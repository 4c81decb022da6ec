"""Penultimate features of a classifier, its last layer, and the fits of the fitted methods (DESIGN, "Other
detectors" and "More detectors").

h(x) = ``forward_head(forward_features(x), pre_logits=True)`` of a model with timm's classifier API (every model
odin_pl registers, and timm's own), and logits = g(h) with g = ``get_classifier()`` (W [N, D], b [N]; b = 0 when
it has none). Any other model names its layers once, ``name_layers(model, classifier="fc", features="layer4")``:
then g is the module ``classifier``, h(x) its input during ``model(x)`` (a forward pre-hook) and the feature maps
(for the methods that use forward_features' output) the output of the module ``features``. A
:class:`FeatureModel` checks once, on the first batch it sees, that g(h) reproduces ``model(x)``; a model without
the API or named layers, or whose logits differ, is refused for the feature methods with a message saying why.
:func:`feature_model` keeps one per model, so that the check runs once per model.
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
                    "`net` that has: name its layers with odin_pl.name_layers(model, classifier='fc', "
                    "features='layer4'), or drop these methods from --methods")


def _submodule(model: nn.Module, name: str, role: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError as err:
        children = ", ".join(child for child, _ in model.named_children()) or "none"
        raise UserError(f"{type(model).__name__} has no module {name!r} (the {role}); its top-level modules: "
                        f"{children} (nested ones as 'a.b')") from err


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

    ``model(x)`` (the check, on the first batch) and ``features`` run on the same normalized images. ``classifier``
    and ``features``: the names of the last layer and of the feature maps' module, for a model without timm's
    classifier API (see the module docstring).
    """

    def __init__(self, model: nn.Module, classifier: str | None = None, features: str | None = None) -> None:
        self.model = model
        self.checked = False
        self._names: tuple[str, str | None] | None = None
        if classifier is None:
            self.net, self._prepare = _timm_net(model)
            self.classifier = Classifier(self.net.get_classifier())
            self._maps_module: nn.Module | None = None
            return
        self.net, self._prepare = model, None
        self.classifier = Classifier(_submodule(model, classifier, "classifier"))
        self._maps_module = _submodule(model, features, "feature maps") if features is not None else None
        self._names = (classifier, features)

    def features(self, x: Tensor, on_feature_maps: Callable[[Tensor], None] | None = None) -> Tensor:
        """h(x) [B, D] of normalized images x; ``on_feature_maps`` receives forward_features' output."""
        h = self._timm_features(x, on_feature_maps) if self._names is None else self._named_features(x, on_feature_maps)
        if h.dim() != 2:
            raise UserError(f"the penultimate features of {type(self.net).__name__} have shape {tuple(h.shape)}, "
                            "not [B, D]: the feature methods need flat features")
        return h

    def _timm_features(self, x: Tensor, on_feature_maps: Callable[[Tensor], None] | None) -> Tensor:
        x = self._prepare(x) if self._prepare is not None else x
        maps = self.net.forward_features(x)
        if on_feature_maps is not None:
            on_feature_maps(maps)
        return self.net.forward_head(maps, pre_logits=True)

    def _named_features(self, x: Tensor, on_feature_maps: Callable[[Tensor], None] | None) -> Tensor:
        """The classifier's input during model(x) (and the named feature maps to ``on_feature_maps``)."""
        classifier, features = self._names
        captured: list[Tensor] = []
        hooks = [self.classifier.module.register_forward_pre_hook(lambda module, args: captured.append(args[0]))]
        if on_feature_maps is not None:
            if self._maps_module is None:
                raise UserError("this method uses the feature maps: name their module too, "
                                f"odin_pl.name_layers(model, classifier={classifier!r}, features='layer4')")
            hooks.append(self._maps_module.register_forward_hook(lambda module, args, out: on_feature_maps(out)))
        try:
            self.model(x)
        finally:
            for hook in hooks:
                hook.remove()
        if len(captured) != 1:
            raise UserError(f"the classifier {classifier!r} ran {len(captured)} times in model(x), not once: name "
                            "the last layer, which turns the penultimate features into the logits")
        return captured[0]

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
            raise UserError(f"the feature methods cannot use this model: the classifier applied to the penultimate "
                            f"features (timm's forward_head, or the named layers) differs from model(x) by up to "
                            f"{gap:.3g} (tolerance {tolerance:.3g}), so its forward does more than the classifier "
                            "on the penultimate features; drop the feature methods from --methods for this model")
        self.checked = True


_FEATURE_MODELS: weakref.WeakKeyDictionary[nn.Module, FeatureModel] = weakref.WeakKeyDictionary()


def feature_model(model: nn.Module) -> FeatureModel:
    """The :class:`FeatureModel` of ``model`` (its named layers, see :func:`name_layers`), made (and so checked)
    once per model."""
    if model not in _FEATURE_MODELS:
        _FEATURE_MODELS[model] = FeatureModel(model)
    return _FEATURE_MODELS[model]


def name_layers(model: nn.Module, classifier: str, features: str | None = None) -> FeatureModel:
    """Name the last layer (``classifier``, e.g. ``"fc"``) and the feature maps' module (``features``, e.g.
    ``"layer4"``) of a model without timm's classifier API, for every feature method (nested modules as
    ``"a.b"``, an ``nn.Sequential``'s by index: ``"3"``); checked once against model(x) on its first batch."""
    _FEATURE_MODELS[model] = FeatureModel(model, classifier, features)
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
