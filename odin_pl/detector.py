"""A deployable detector: a classifier, a method with its tuned setting, the input spec and a decision threshold.

``Detector.fit(...)`` sets the threshold at a target TPR on in-distribution scores
(:func:`odin_pl.metrics.threshold_at_tpr`: the largest delta with mean(scores >= delta) >= tpr), ``predict(x)``
flags ``score < threshold`` as OOD, and ``save`` / ``load`` keep everything but the model's weights in a small,
human-readable JSON file (format version 2 names the method; version 1 files are ODIN detectors and still load).
:class:`ODINDetector` is the ODIN detector with (T, epsilon) as its arguments.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import Tensor, nn

from odin_pl.methods import Setting, create_method
from odin_pl.metrics import _as_scores, threshold_at_tpr
from odin_pl.scoring import Batch, max_softmax
from odin_pl.spec import ImageSpec

FORMAT = "odin_pl.detector"
FORMAT_VERSION = 2  # 2: "method" and "params"; 1: ODIN's "temperature" and "epsilon"


@dataclass(frozen=True)
class Detection:
    """Per-image outputs of :meth:`Detector.predict_all`: class, MSP, the method's score, OOD flag."""

    predicted_class: Tensor
    msp: Tensor
    score: Tensor
    is_ood: Tensor


class Detector:
    """A method at a fixed setting with a threshold: images scoring below it are flagged OOD.

    ``model`` takes images normalized with ``input_spec`` (its std makes ODIN's epsilon a step in [0, 1] pixels)
    and must be in eval mode. ``params``: the setting, by name or in the method's parameter order. ``tuned_on``
    records where the setting and threshold come from (data, seed, split).
    """

    def __init__(self, model: nn.Module, method: str, params: Mapping[str, float] | Sequence[float],
                 input_spec: ImageSpec, threshold: float, tpr: float = 0.95, tuned_on: dict[str, Any] | None = None
                 ) -> None:
        self.method = create_method(method)
        if isinstance(params, Mapping):
            names = [p.name for p in self.method.params]
            if set(params) != set(names):
                raise ValueError(f"method {method!r} takes the parameters ({', '.join(names) or 'none'}), got "
                                 f"({', '.join(params) or 'none'})")
            params = [params[name] for name in names]
        self.setting: Setting = self.method.check_setting(params)
        _check_model_fits(model, input_spec)
        self.model = model
        self.input_spec = input_spec
        self.threshold, self.tpr = float(threshold), float(tpr)
        self.tuned_on = dict(tuned_on or {})

    @property
    def params(self) -> dict[str, float]:
        return dict(zip((p.name for p in self.method.params), self.setting))

    @classmethod
    def fit(cls, model: nn.Module, method: str, params: Mapping[str, float] | Sequence[float],
            input_spec: ImageSpec, in_scores: Any, tpr: float = 0.95, tuned_on: dict[str, Any] | None = None
            ) -> "Detector":
        """A detector whose threshold keeps at least ``tpr`` of the in-distribution ``in_scores`` (the method's
        scores at this setting)."""
        detector = Detector(model, method, params, input_spec, threshold=0.0, tpr=tpr, tuned_on=tuned_on)
        detector.fit_threshold(in_scores, tpr)
        return detector

    def fit_threshold(self, in_scores: Any, tpr: float = 0.95) -> float:
        """Set and return the threshold: the ceil(tpr * n)-th largest in-distribution score."""
        self.threshold, self.tpr = threshold_at_tpr(_as_scores(in_scores, "in_scores"), tpr), float(tpr)
        return self.threshold

    def _batch(self, x: Tensor) -> Batch:
        return Batch(self.model, x, self.input_spec.std, self.method.gradient_temperatures([self.setting]))

    def score(self, x: Tensor) -> Tensor:
        """The method's scores [B] of a normalized batch (higher = more in-distribution)."""
        return self.method.score(self._batch(x), [self.setting])[0]

    def predict_all(self, x: Tensor) -> Detection:
        """Class from the clean logits, MSP, the method's score and OOD flag of each image; one forward pass on x
        (and the method's own, such as ODIN's on the perturbed x)."""
        batch = self._batch(x)
        if self.input_spec.num_classes and batch.logits.shape[1] != self.input_spec.num_classes:
            raise ValueError(f"the model gives {batch.logits.shape[1]} logits but the detector was tuned for "
                             f"{self.input_spec.num_classes} classes")
        score = self.method.score(batch, [self.setting])[0]
        return Detection(batch.logits.argmax(dim=1), max_softmax(batch.logits, 1.0), score, score < self.threshold)

    def predict(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(is_ood [B] bool, predicted class [B]) of a normalized batch."""
        detection = self.predict_all(x)
        return detection.is_ood, detection.predicted_class

    def to_dict(self) -> dict[str, Any]:
        from odin_pl import __version__

        return {"format": FORMAT, "format_version": FORMAT_VERSION, "odin_pl_version": __version__,
                "method": self.method.name, "params": self.params, "threshold": self.threshold, "tpr": self.tpr,
                "input_spec": self.input_spec.to_dict(), "tuned_on": self.tuned_on}

    def save(self, path: str | Path) -> Path:
        """Write the detector (not the weights) as JSON; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path, model: nn.Module) -> "Detector":
        """The detector saved at ``path`` (format version 1 or 2), on ``model`` (whose spec and class count must
        match): an :class:`ODINDetector` for ODIN, else a :class:`Detector` of its method (which
        ``ODINDetector.load`` refuses)."""
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
        version = data.get("format_version")
        if version not in (1, FORMAT_VERSION):
            raise ValueError(f"{path} has detector format version {version!r}; this odin_pl reads versions 1 and "
                             f"{FORMAT_VERSION} (re-run evaluate.py to write it again)")
        try:
            method, params = (("odin", {"temperature": data["temperature"], "epsilon": data["epsilon"]})
                              if version == 1 else (data["method"], data["params"]))
            spec, rest = ImageSpec.from_dict(data["input_spec"]), (data["threshold"], data["tpr"], data.get("tuned_on"))
        except KeyError as err:
            raise ValueError(f"{path} lacks the field {err}: not a complete detector file") from err
        if method == "odin" and isinstance(params, dict) and set(params) == {"temperature", "epsilon"}:
            return ODINDetector(model, params["temperature"], params["epsilon"], spec, *rest)
        if cls is ODINDetector:
            raise ValueError(f"{path} is a detector of the method {method!r}, not ODIN: load it with Detector.load")
        return Detector(model, method, params, spec, *rest)


class ODINDetector(Detector):
    """The ODIN detector at (T, epsilon)."""

    def __init__(self, model: nn.Module, temperature: float, epsilon: float, input_spec: ImageSpec,
                 threshold: float, tpr: float = 0.95, tuned_on: dict[str, Any] | None = None) -> None:
        super().__init__(model, "odin", (temperature, epsilon), input_spec, threshold, tpr, tuned_on)

    @classmethod
    def fit(cls, model: nn.Module, temperature: float, epsilon: float, input_spec: ImageSpec,  # type: ignore[override]
            in_scores: Any, tpr: float = 0.95, tuned_on: dict[str, Any] | None = None) -> "ODINDetector":
        detector = cls(model, temperature, epsilon, input_spec, threshold=0.0, tpr=tpr, tuned_on=tuned_on)
        detector.fit_threshold(in_scores, tpr)
        return detector

    @property
    def temperature(self) -> float:
        return self.setting[0]

    @property
    def epsilon(self) -> float:
        return self.setting[1]


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
