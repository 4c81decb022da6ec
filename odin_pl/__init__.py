"""odin-pl: ODIN out-of-distribution detection (Liang, Li, Srikant, ICLR 2018) for PyTorch Lightning."""

from odin_pl import models  # noqa: F401  (registers the project's models with timm)
from odin_pl.deploy.detector import Detector, ODINDetector
from odin_pl.methods import create_method, list_methods, register_method
from odin_pl.methods.odin import msp_score, odin_score
from odin_pl.spec import ImageSpec
from odin_pl.version import __version__


__all__ = ["Detector", "ImageSpec", "ODINDetector", "create_method", "list_methods", "msp_score", "odin_score",
           "register_method", "__version__"]
