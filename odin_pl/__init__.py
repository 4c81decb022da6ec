"""odin-pl: ODIN out-of-distribution detection (Liang, Li, Srikant, ICLR 2018) for PyTorch Lightning."""

from typing import Any

from odin_pl import models  # noqa: F401  (registers the project's models with timm)
from odin_pl.deploy.detector import Detector, ODINDetector, score
from odin_pl.images import transforms
from odin_pl.methods import create_method, list_methods, register_method
from odin_pl.methods.features import name_layers
from odin_pl.methods.odin import msp_score, odin_score
from odin_pl.spec import ImageSpec
from odin_pl.version import __version__

# Public names loaded on first use (the evaluation imports Lightning's Fabric and the run's option groups).
_EVALUATION = ("evaluate", "Evaluation")

__all__ = ["Detector", "Evaluation", "ImageSpec", "ODINDetector", "create_method", "evaluate", "list_methods",
           "msp_score", "name_layers", "odin_score", "register_method", "score", "transforms", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EVALUATION:
        from odin_pl.evaluation import api
        return getattr(api, name)
    raise AttributeError(f"module 'odin_pl' has no attribute {name!r}")
