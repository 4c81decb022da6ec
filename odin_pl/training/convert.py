"""Weights from elsewhere onto this project's models: plain state_dicts, and the ODIN release's pickled models.

The ODIN release (facebookresearch/odin) ships ``densenet10.pth``, ``wideresnet10.pth``, ... as whole pickled
models of its ``DenseNet3`` (DenseNet-BC-100) and ``WideResNet`` (WRN-28-10) classes. Their parameter names are
this project's (:mod:`odin_pl.models.densenet`, :mod:`odin_pl.models.wide_resnet`) except the WRN's
``convShortcut``, called ``shortcut`` here; being saved by PyTorch 0.3, their BatchNorm layers have no
``num_batches_tracked`` buffer. :func:`convert_state_dict` maps both. Unpickling runs code from the file, so
:func:`read_weights` does it only with ``trust_pickle=True``, and then needs no copy of the release's classes:
classes that cannot be imported are rebuilt as plain module trees (their weights are all that is used).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from odin_pl.archives import load_torch_file
from odin_pl.training.module import ImageClassifier
from odin_pl.spec import ImageSpec
from odin_pl.errors import MissingFileError, UserError

StateDict = dict[str, Tensor]
RENAMES = ((re.compile(r"(^|\.)convShortcut\."), r"\1shortcut."),)  # the release's WRN -> odin_pl.models
BATCHNORM_COUNTER = "num_batches_tracked"


class _ModuleTreeUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds classes it cannot import as plain ``nn.Module`` subclasses of that name."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (nn.Module,), {"__module__": module})  # weights only: no forward


_PICKLE_MODULE = SimpleNamespace(Unpickler=_ModuleTreeUnpickler, load=pickle.load, __name__="odin_pl_module_trees")


def read_weights(path: str | Path, trust_pickle: bool = False) -> StateDict:
    """The state_dict in ``path``: a plain state_dict (read with ``weights_only=True``), or with ``trust_pickle``
    also a whole pickled model (as the ODIN release's files are); a zip archive's checksums are verified first."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"weights file {path} does not exist")
    loaded = load_torch_file(path, "weights file", trust_pickle, pickle_module=_PICKLE_MODULE,
                             hint=" (a plain state_dict, or with --trust_pickle true a whole pickled model such as the "
                                  "ODIN release's densenet10.pth)")
    state_dict = loaded.state_dict() if isinstance(loaded, nn.Module) else loaded
    if not isinstance(state_dict, dict) or not all(isinstance(k, str) and isinstance(v, Tensor)
                                                   for k, v in state_dict.items()):
        raise UserError(f"{path} is not a state_dict (a dict of parameter names to tensors) nor a whole model; "
                        f"found {type(loaded).__name__}")
    return dict(state_dict)


def convert_state_dict(state_dict: StateDict, target: nn.Module) -> StateDict:
    """``state_dict`` with the names ``target`` uses: a DataParallel ``module.`` prefix dropped, the release's
    WRN ``convShortcut`` renamed, and a missing BatchNorm ``num_batches_tracked`` set to 0 where the layer's
    running statistics are there (checkpoints saved before PyTorch 0.4)."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    converted = {}
    for key, value in state_dict.items():
        for pattern, replacement in RENAMES:
            key = pattern.sub(replacement, key)
        converted[key] = value
    for key, value in target.state_dict().items():
        layer = key[:-len(BATCHNORM_COUNTER)]
        if key.endswith(BATCHNORM_COUNTER) and key not in converted and f"{layer}running_mean" in converted:
            converted[key] = torch.zeros_like(value)
    return converted


def check_fits(state_dict: StateDict, target: nn.Module, what: str) -> None:
    """Raise a ValueError listing missing, unexpected and wrongly shaped entries when ``state_dict`` does not fit
    ``target`` exactly; ``what`` names the target in the message."""
    expected = target.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state_dict and state_dict[k].shape != v.shape]
    problems = [f"{label} ({len(keys)}): {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                for label, keys in (("missing", missing), ("unexpected", unexpected),
                                    ("shape (weights vs model)", shapes)) if keys]
    if problems:
        raise UserError(f"the weights do not fit {what}: " + "; ".join(problems))


def load_foreign_model(name: str, weights: str | Path, spec: ImageSpec, trust_pickle: bool = False
                       ) -> ImageClassifier:
    """An eval-mode ImageClassifier with backbone ``name`` (registered in timm) for ``spec``, with the weights
    of ``weights`` (see :func:`read_weights`, :func:`convert_state_dict`)."""
    model = ImageClassifier(name, num_classes=spec.num_classes or None, image_spec=spec.to_dict())
    state_dict = convert_state_dict(read_weights(weights, trust_pickle), model.net)
    check_fits(state_dict, model.net, f"{name} with {model.hparams.num_classes} classes and {spec.channels} "
                                      f"input channel(s) (from {weights})")
    model.net.load_state_dict(state_dict)
    return model.eval()
