"""A deployable detector: a classifier, a method with its tuned setting, the input spec and a decision threshold.

``Detector.fit(...)`` sets the threshold at a target TPR on in-distribution scores
(:func:`odin_pl.metrics.threshold_at_tpr`: the largest delta with mean(scores >= delta) >= tpr), ``predict(x)``
flags ``score < threshold`` as OOD, and ``save`` / ``load`` keep everything but the model's weights in a small,
human-readable JSON file (format version 2 names the method; version 1 files are ODIN detectors and still load).
A detector of a method fitted on training features (mahalanobis, react, knn) records its fit file (relative to the
detector file) and that file's SHA-256, and refuses to load when the file changed.
:class:`ODINDetector` is the ODIN detector with (T, epsilon) as its arguments.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import Tensor, nn

from odin_pl.features import FeatureModel, Fits
from odin_pl.fits import SavedFit, load_fit
from odin_pl.methods import Setting, create_method, method_batch
from odin_pl.metrics import _as_scores, threshold_at_tpr
from odin_pl.scoring import Batch, max_softmax
from odin_pl.spec import ImageSpec
from odin_pl.errors import MissingFileError, UserError

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
    records where the setting and threshold come from (data, seed, split). ``fit``: the saved fit of a method
    that needs one (``<output_dir>/fits/<method>.pt``), made for ``model``.
    """

    def __init__(self, model: nn.Module, method: str, params: Mapping[str, float] | Sequence[float],
                 input_spec: ImageSpec, threshold: float, tpr: float = 0.95, tuned_on: dict[str, Any] | None = None,
                 fit: SavedFit | None = None) -> None:
        self.method = create_method(method)
        if isinstance(params, Mapping):
            names = [p.name for p in self.method.params]
            if set(params) != set(names):
                raise UserError(f"method {method!r} takes the parameters ({', '.join(names) or 'none'}), got "
                                f"({', '.join(params) or 'none'})")
            params = [params[name] for name in names]
        self.setting: Setting = self.method.check_setting(params)
        _check_model_fits(model, input_spec)
        self.model = model
        self.input_spec = input_spec
        self.threshold, self.tpr = float(threshold), float(tpr)
        self.tuned_on = dict(tuned_on or {})
        self.fit_file, self.fits = fit, self._fits(model, fit)

    def _fits(self, model: nn.Module, fit: SavedFit | None) -> Fits | None:
        """The fit of a fitted method on ``model``'s features (None for other methods), checked to match."""
        name = self.method.name
        if not self.method.needs_fit:
            if fit is not None:
                raise UserError(f"method {name!r} needs no fit; got the fit file {fit.path}")
            return None
        if fit is None:
            raise UserError(f"method {name!r} scores with a fit on the training images: pass fit= (evaluate.py "
                            f"saves it to <output_dir>/fits/{name}.pt)")
        if fit.method != name:
            raise UserError(f"the fit file {fit.path} is the fit of {fit.method!r}, not of {name!r}")
        self.method.settings_for_fit([self.setting], fit.tensors)
        device = next(model.parameters()).device
        return Fits(FeatureModel(model), {name: {key: t.to(device) for key, t in fit.tensors.items()}})

    @property
    def params(self) -> dict[str, float]:
        return dict(zip((p.name for p in self.method.params), self.setting))

    @classmethod
    def fit(cls, model: nn.Module, method: str, params: Mapping[str, float] | Sequence[float],
            input_spec: ImageSpec, in_scores: Any, tpr: float = 0.95, tuned_on: dict[str, Any] | None = None,
            fit: SavedFit | None = None) -> "Detector":
        """A detector whose threshold keeps at least ``tpr`` of the in-distribution ``in_scores`` (the method's
        scores at this setting)."""
        detector = Detector(model, method, params, input_spec, threshold=0.0, tpr=tpr, tuned_on=tuned_on, fit=fit)
        detector.fit_threshold(in_scores, tpr)
        return detector

    def fit_threshold(self, in_scores: Any, tpr: float = 0.95) -> float:
        """Set and return the threshold: the ceil(tpr * n)-th largest in-distribution score."""
        self.threshold, self.tpr = threshold_at_tpr(_as_scores(in_scores, "in_scores"), tpr), float(tpr)
        return self.threshold

    def _batch(self, x: Tensor) -> Batch:
        return method_batch(self.model, x, {self.method.name: (self.method, [self.setting])}, self.input_spec.std,
                            fits=self.fits)

    def score(self, x: Tensor) -> Tensor:
        """The method's scores [B] of a normalized batch (higher = more in-distribution)."""
        return self.method.score(self._batch(x), [self.setting])[0]

    def predict_all(self, x: Tensor) -> Detection:
        """Class from the clean logits, MSP, the method's score and OOD flag of each image; one forward pass on x
        (and the method's own, such as ODIN's on the perturbed x)."""
        batch = self._batch(x)
        if self.input_spec.num_classes and batch.logits.shape[1] != self.input_spec.num_classes:
            raise UserError(f"the model gives {batch.logits.shape[1]} logits but the detector was tuned for "
                            f"{self.input_spec.num_classes} classes")
        score = self.method.score(batch, [self.setting])[0]
        return Detection(batch.logits.argmax(dim=1), max_softmax(batch.logits, 1.0), score, score < self.threshold)

    def predict(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(is_ood [B] bool, predicted class [B]) of a normalized batch."""
        detection = self.predict_all(x)
        return detection.is_ood, detection.predicted_class

    def to_dict(self, folder: Path | None = None) -> dict[str, Any]:
        """The detector's fields; a fit file's path is relative to ``folder`` (the detector file's) when given."""
        from odin_pl import __version__

        data = {"format": FORMAT, "format_version": FORMAT_VERSION, "odin_pl_version": __version__,
                "method": self.method.name, "params": self.params, "threshold": self.threshold, "tpr": self.tpr,
                "input_spec": self.input_spec.to_dict(), "tuned_on": self.tuned_on}
        if self.fit_file is not None:
            path = self.fit_file.path.resolve()
            data["fit"] = {"file": os.path.relpath(path, folder.resolve()) if folder is not None else str(path),
                           "sha256": self.fit_file.sha256}
        return data

    def save(self, path: str | Path) -> Path:
        """Write the detector (not the weights) as JSON; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(path.parent), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path, model: nn.Module, weights_sha256: str | None = None) -> "Detector":
        """The detector saved at ``path`` (format version 1 or 2), on ``model`` (whose spec and class count must
        match): an :class:`ODINDetector` for ODIN, else a :class:`Detector` of its method (which
        ``ODINDetector.load`` refuses). A fitted method's fit file must still have its recorded SHA-256 and, given
        ``weights_sha256`` (of the model's weights file), have been made with those weights."""
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"detector file {path} does not exist; evaluate.py writes one per tuned set "
                                   "to <output_dir>/detectors/<set>.json")
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UserError(f"{path} is not a detector file (invalid JSON: {err})") from err
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UserError(f"{path} is not an odin_pl detector file (no \"format\": \"{FORMAT}\")")
        version = data.get("format_version")
        if version not in (1, FORMAT_VERSION):
            raise UserError(f"{path} has detector format version {version!r}; this odin_pl reads versions 1 and "
                            f"{FORMAT_VERSION} (re-run evaluate.py to write it again)")
        try:
            method, params = (("odin", {"temperature": data["temperature"], "epsilon": data["epsilon"]})
                              if version == 1 else (data["method"], data["params"]))
            spec, rest = ImageSpec.from_dict(data["input_spec"]), (data["threshold"], data["tpr"], data.get("tuned_on"))
            fit = _load_fit(path, data["fit"], weights_sha256) if "fit" in data else None
        except KeyError as err:
            raise UserError(f"{path} lacks the field {err}: not a complete detector file") from err
        if method == "odin" and isinstance(params, dict) and set(params) == {"temperature", "epsilon"}:
            return ODINDetector(model, params["temperature"], params["epsilon"], spec, *rest)
        if cls is ODINDetector:
            raise UserError(f"{path} is a detector of the method {method!r}, not ODIN: load it with Detector.load")
        return Detector(model, method, params, spec, *rest, fit=fit)


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


def _load_fit(path: Path, record: Mapping[str, str], weights_sha256: str | None) -> SavedFit:
    """The fit file a detector file records (its path relative to the detector's folder), checked against the
    recorded SHA-256 and, when given, the weights' SHA-256."""
    fit = load_fit(path.parent / record["file"], record["sha256"])
    made_with = fit.context.get("weights_sha256")
    if weights_sha256 is not None and made_with != weights_sha256:
        raise UserError(f"the fit {fit.path} of detector {path} was made with the weights of SHA-256 {made_with}, "
                        f"not these ({weights_sha256}): load the detector with the model it was tuned for")
    return fit


def _check_model_fits(model: nn.Module, spec: ImageSpec) -> None:
    """Raise a ValueError when the model records an image spec or class count other than ``spec``'s."""
    model_spec: ImageSpec | None = getattr(model, "image_spec", None)
    if model_spec is not None:
        fields = ("size", "channels", "mean", "std")
        differ = [f"{f} {getattr(model_spec, f)} vs {getattr(spec, f)}" for f in fields
                  if getattr(model_spec, f) != getattr(spec, f)]
        if differ:
            raise UserError(f"the model's image spec does not match the detector's: {'; '.join(differ)} "
                            "(model vs detector); use the model the detector was tuned for")
    hparams = getattr(model, "hparams", {})
    num_classes = hparams.get("num_classes") if "num_classes" in hparams else getattr(model, "num_classes", None)
    if num_classes is not None and spec.num_classes and num_classes != spec.num_classes:
        raise UserError(f"the model has {num_classes} classes but the detector was tuned for {spec.num_classes}")
