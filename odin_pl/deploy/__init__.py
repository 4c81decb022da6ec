"""Deployable detectors: a tuned method and threshold saved as a file (``detector``) and scoring image sets with
one (``prediction``)."""

from odin_pl.deploy.detector import Detection, Detector, ODINDetector
from odin_pl.deploy.prediction import detect_dataset, write_detections

__all__ = ["Detection", "Detector", "ODINDetector", "detect_dataset", "write_detections"]
