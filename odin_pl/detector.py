"""A deployable ODIN detector: a classifier, its tuned (T, epsilon), input spec and decision threshold.

``ODINDetector.fit(...)`` sets the threshold at a target TPR on in-distribution scores
(:func:`odin_pl.metrics.threshold_at_tpr`: the largest delta with mean(scores >= delta) >= tpr), ``predict(x)``
flags ``score < threshold`` as OOD, and ``save`` / ``load`` keep everything but the model's weights in a small,
human-readable JSON file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from odin_pl.metrics import _as_scores, threshold_at_tpr
from odin_pl.scoring import (check_epsilon, check_images, check_model_in_eval, check_temperature, logits_and_steps,
                             max_softmax, perturbed_scores, score_settings)
from odin_pl.spec import ImageSpec

FORMAT = "odin_pl.detector"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Detection:
    """Per-image outputs of :meth:`ODINDetector.predict_all`: class, MSP and ODIN scores, OOD flag."""

    predicted_class: Tensor
    msp: Tensor
    odin: Tensor
    is_ood: Tensor


class ODINDetector:
    """ODIN at a fixed (T, epsilon) with a threshold: images scoring below it are flagged OOD.

    ``model`` takes images normalized with ``input_spec`` (its std makes epsilon a step in [0, 1] pixels) and
    must be in eval mode. ``tuned_on`` records where the parameters and threshold come from (data, seed, split).
    """

    def __init__(self, model: nn.Module, temperature: float, epsilon: float, input_spec: ImageSpec,
                 threshold: float, tpr: float = 0.95, tuned_on: dict[str, Any] | None = None) -> None:
        check_temperature(temperature)
        check_epsilon(epsilon)
        _check_model_fits(model, input_spec)
        self.model = model
        self.temperature, self.epsilon = float(temperature), float(epsilon)
        self.input_spec = input_spec
        self.threshold, self.tpr = float(threshold), float(tpr)
        self.tuned_on = dict(tuned_on or {})

    @classmethod
    def fit(cls, model: nn.Module, temperature: float, epsilon: float, input_spec: ImageSpec, in_scores: Any,
            tpr: float = 0.95, tuned_on: dict[str, Any] | None = None) -> "ODINDetector":
        """A detector whose threshold keeps at least ``tpr`` of the in-distribution ``in_scores`` (ODIN scores at
        this (T, epsilon))."""
        detector = cls(model, temperature, epsilon, input_spec, threshold=0.0, tpr=tpr, tuned_on=tuned_on)
        detector.fit_threshold(in_scores, tpr)
        return detector

    def fit_threshold(self, in_scores: Any, tpr: float = 0.95) -> float:
        """Set and return the threshold: the ceil(tpr * n)-th largest in-distribution score."""
        self.threshold, self.tpr = threshold_at_tpr(_as_scores(in_scores, "in_scores"), tpr), float(tpr)
        return self.threshold

    def score(self, x: Tensor) -> Tensor:
        """ODIN scores [B] of a normalized batch (higher = more in-distribution)."""
        return score_settings(self.model, x, [(self.temperature, self.epsilon)], self.input_spec.std)[0]

    def predict_all(self, x: Tensor) -> Detection:
        """Class from the clean logits, MSP, ODIN score and OOD flag of each image; one forward pass on x (and
        one on the perturbed x when epsilon > 0)."""
        check_model_in_eval(self.model)
        check_images(x, self.model)
        temperatures = [self.temperature] if self.epsilon > 0 else []
        logits, steps = logits_and_steps(self.model, x, temperatures, self.input_spec.std)
        if self.input_spec.num_classes and logits.shape[1] != self.input_spec.num_classes:
            raise ValueError(f"the model gives {logits.shape[1]} logits but the detector was tuned for "
                             f"{self.input_spec.num_classes} classes")
        odin = (perturbed_scores(self.model, x, steps[0], self.temperature, [self.epsilon])[0] if steps
                else max_softmax(logits, self.temperature))
        return Detection(logits.argmax(dim=1), max_softmax(logits, 1.0), odin, odin < self.threshold)

    def predict(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(is_ood [B] bool, predicted class [B]) of a normalized batch."""
        detection = self.predict_all(x)
        return detection.is_ood, detection.predicted_class

    def to_dict(self) -> dict[str, Any]:
        from odin_pl import __version__

        return {"format": FORMAT, "format_version": FORMAT_VERSION, "odin_pl_version": __version__,
                "temperature": self.temperature, "epsilon": self.epsilon, "threshold": self.threshold,
                "tpr": self.tpr, "input_spec": self.input_spec.to_dict(), "tuned_on": self.tuned_on}

    def save(self, path: str | Path) -> Path:
        """Write the detector (not the weights) as JSON; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path, model: nn.Module) -> "ODINDetector":
        """The detector saved at ``path``, on ``model`` (whose spec and class count must match)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"detector file {path} does not exist; evaluate.py writes one per tuned set "
                                    "to <output_dir>/detectors/<set>.json")
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is not a detector file (invalid JSON: {err})") from err
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path} is not an odin_pl detector file (no \"format\": \"{FORMAT}\")")
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path} has detector format version {data.get('format_version')!r}; this odin_pl "
                             f"reads version {FORMAT_VERSION} (re-run evaluate.py to write it again)")
        try:
            spec = ImageSpec.from_dict(data["input_spec"])
            return cls(model, data["temperature"], data["epsilon"], spec, data["threshold"], data["tpr"],
                       data.get("tuned_on"))
        except KeyError as err:
            raise ValueError(f"{path} lacks the field {err}: not a complete detector file") from err


def _check_model_fits(model: nn.Module, spec: ImageSpec) -> None:
    """Raise a ValueError when the model records an image spec or class count other than ``spec``'s."""
    model_spec: ImageSpec | None = getattr(model, "image_spec", None)
    if model_spec is not None:
        fields = ("size", "channels", "mean", "std")
        differ = [f"{f} {getattr(model_spec, f)} vs {getattr(spec, f)}" for f in fields
                  if getattr(model_spec, f) != getattr(spec, f)]
        if differ:
            raise ValueError(f"the model's image spec does not match the detector's: {'; '.join(differ)} "
                             "(model vs detector); use the model the detector was tuned for")
    hparams = getattr(model, "hparams", {})
    num_classes = hparams.get("num_classes") if "num_classes" in hparams else getattr(model, "num_classes", None)
    if num_classes is not None and spec.num_classes and num_classes != spec.num_classes:
        raise ValueError(f"the model has {num_classes} classes but the detector was tuned for {spec.num_classes}")
