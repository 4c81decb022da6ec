"""A deployable detector: a classifier, a method with its tuned setting, the input spec and a decision threshold.

``Detector.fit(...)`` sets the threshold at a target TPR on in-distribution scores
(:func:`odin_pl.metrics.threshold_at_tpr`: the largest delta with mean(scores >= delta) >= tpr), ``predict(x)``
flags ``score < threshold`` as OOD, and ``save`` / ``load`` keep everything but the model's weights in a small,
human-readable JSON file (format version 2: the method's name and its parameters by name, as the method declares
them). A detector of a fitted method records its fit file (relative to the detector file) and that file's SHA-256,
and refuses to load when the file changed. :class:`ODINDetector` is the detector of the paper's method (the
registry's role ``paper``) with its parameters (T, epsilon) as arguments.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from odin_pl.methods.features import Fits
from odin_pl.files import atomic_write
from odin_pl.protocol.fits import SavedFit, load_fit
from odin_pl.methods import Batch, Needs, Setting, create_method, method_with_role
from odin_pl.metrics import as_scores, threshold_at_tpr
from odin_pl.methods.batch import non_finite_error
from odin_pl.spec import ImageSpec
from odin_pl.errors import MissingFileError, UserError
from odin_pl.version import __version__

FORMAT = "odin_pl.detector"
FORMAT_VERSION = 2  # "method" and "params"


@dataclass(frozen=True)
class Detection:
    """Per-image outputs of :meth:`Detector.predict_all`: class, the baseline's score (MSP), the method's score,
    OOD flag."""

    predicted_class: Tensor
    baseline: Tensor
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
        self.threshold, self.tpr = self._checked(threshold, tpr)
        self.tuned_on = dict(tuned_on or {})
        self.fit_file, self.fits = fit, self._fits(model, fit)
        self.baseline = create_method(method_with_role("baseline"))

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
        return Fits({name: {key: t.to(device) for key, t in fit.tensors.items()}})

    def _checked(self, threshold: float, tpr: float) -> tuple[float, float]:
        """(threshold, tpr) as floats, or a UserError: ``tpr`` in (0, 1] and a finite threshold within the method's
        score range (up to 4 units in the last place of float32 at the bounds)."""
        try:
            tpr, threshold = float(tpr), float(threshold)
        except (TypeError, ValueError) as err:
            raise UserError(f"the threshold ({threshold!r}) and tpr ({tpr!r}) of a detector must be numbers: a damaged "
                            "or hand-edited detector file; write it again with evaluate.py") from err
        if not 0 < tpr <= 1:
            raise UserError(f"tpr must be in (0, 1] (the fraction of in-distribution images kept), got {tpr}")
        low, high = self.method.score_range(self.input_spec.num_classes or 1)
        scale = max([1.0, *(abs(bound) for bound in (low, high) if math.isfinite(bound))])
        slack = 4 * float(torch.finfo(torch.float32).eps) * scale
        if not math.isfinite(threshold) or not low - slack <= threshold <= high + slack:
            raise UserError(f"threshold {threshold} of a {self.method.name} detector is not a finite number in its "
                            f"score range [{low}, {high}]: a damaged or hand-edited detector file; write it again with "
                            "evaluate.py")
        return threshold, tpr

    @property
    def params(self) -> dict[str, float]:
        return dict(zip((p.name for p in self.method.params), self.setting))

    @classmethod
    def fit(cls, model: nn.Module, method: str, params: Mapping[str, float] | Sequence[float],
            input_spec: ImageSpec, in_scores: Any, tpr: float = 0.95, tuned_on: dict[str, Any] | None = None,
            fit: SavedFit | None = None) -> "Detector":
        """A detector whose threshold keeps at least ``tpr`` of the in-distribution ``in_scores`` (the method's
        scores at this setting)."""
        threshold = threshold_at_tpr(as_scores(in_scores, "in_scores"), tpr)
        return Detector(model, method, params, input_spec, threshold, tpr, tuned_on=tuned_on, fit=fit)

    def fit_threshold(self, in_scores: Any, tpr: float = 0.95) -> float:
        """Set and return the threshold: the ceil(tpr * n)-th largest in-distribution score."""
        self.threshold, self.tpr = self._checked(threshold_at_tpr(as_scores(in_scores, "in_scores"), tpr), tpr)
        return self.threshold

    def _batch(self, x: Tensor, *, baseline: bool = False) -> Batch:
        """The batch of x for the method (and, with ``baseline``, the baseline's score and the clean logits)."""
        fit = self.fits.of(self.method.name) if self.fits is not None else None
        needs = self.method.needs([self.setting], fit)
        if baseline:
            needs = needs | self.baseline.needs([self.baseline.default_setting()]) | Needs(logits=True)
        return Batch(self.model, x, self.input_spec.std, needs=needs, fits=self.fits)

    def score(self, x: Tensor) -> Tensor:
        """The method's scores [B] of a normalized batch (higher = more in-distribution)."""
        return self.method.score(self._batch(x), [self.setting])[0]

    def predict_all(self, x: Tensor) -> Detection:
        """Class from the clean logits, the baseline's score, the method's score and OOD flag of each image; one
        forward pass on x (and the method's own, such as the perturbed x)."""
        batch = self._batch(x, baseline=True)
        if self.input_spec.num_classes and batch.logits.shape[1] != self.input_spec.num_classes:
            raise UserError(f"the model gives {batch.logits.shape[1]} logits but the detector was tuned for "
                            f"{self.input_spec.num_classes} classes")
        score = self.method.score(batch, [self.setting])[0]
        error = non_finite_error({self.method.name: score}, "prediction", {self.method.name: [self.setting]})
        if error is not None:
            raise error
        baseline = self.baseline.score(batch, [self.baseline.default_setting()])[0]
        return Detection(batch.logits.argmax(dim=1), baseline, score, score < self.threshold)

    def predict(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(is_ood [B] bool, predicted class [B]) of a normalized batch."""
        detection = self.predict_all(x)
        return detection.is_ood, detection.predicted_class

    def to_dict(self, folder: Path | None = None) -> dict[str, Any]:
        """The detector's fields; a fit file's path is relative to ``folder`` (the detector file's) when given."""

        data = {"format": FORMAT, "format_version": FORMAT_VERSION, "odin_pl_version": __version__,
                "method": self.method.name, "params": self.params, "threshold": self.threshold, "tpr": self.tpr,
                "input_spec": self.input_spec.to_dict(), "tuned_on": self.tuned_on}
        if self.fit_file is not None:
            path = self.fit_file.path.resolve()
            data["fit"] = {"file": os.path.relpath(path, folder.resolve()) if folder is not None else str(path),
                           "sha256": self.fit_file.sha256}
        return data

    def save(self, path: str | Path) -> Path:
        """Write the detector (not the weights) as JSON, atomically; returns the path."""
        path = Path(path)
        with atomic_write(path) as handle:
            handle.write(json.dumps(self.to_dict(path.parent), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path, model: nn.Module, weights_sha256: str | None = None,
             allow_other_weights: bool = False) -> "Detector":
        """The detector saved at ``path``, on ``model`` (whose spec and class count must match): an
        :class:`ODINDetector` for the paper's method, else a :class:`Detector` of its method (which
        ``ODINDetector.load`` refuses). Given ``weights_sha256`` (of the model's weights file), the detector must
        have been tuned with those weights (and a fitted method's fit made with them), else it is refused;
        ``allow_other_weights`` turns the refusal into a warning that names both. A fitted method's fit file must
        still have its recorded SHA-256."""
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
        if version != FORMAT_VERSION:
            raise UserError(f"{path} has detector format version {version!r}; this odin_pl reads version "
                            f"{FORMAT_VERSION} (re-run evaluate.py to write it again)")
        try:
            method, params = data["method"], data["params"]
            spec, rest = ImageSpec.from_dict(data["input_spec"]), (data["threshold"], data["tpr"], data.get("tuned_on"))
            if weights_sha256 is not None:
                _check_weights(path, (data.get("tuned_on") or {}).get("weights_sha256"), weights_sha256,
                               allow_other_weights)
            fit = _load_fit(path, data["fit"], None if allow_other_weights else weights_sha256) if "fit" in data \
                else None
        except KeyError as err:
            raise UserError(f"{path} lacks the field {err}: not a complete detector file") from err
        detector = Detector(model, method, params, spec, *rest, fit=fit)
        if method == method_with_role("paper"):
            return ODINDetector(model, *detector.setting, spec, *rest)
        if cls is ODINDetector:
            raise UserError(f"{path} is a detector of the method {method!r}, not of the paper's "
                            f"({method_with_role('paper')}): load it with Detector.load")
        return detector


class ODINDetector(Detector):
    """The detector of the paper's method (ODIN) at (T, epsilon)."""

    def __init__(self, model: nn.Module, temperature: float, epsilon: float, input_spec: ImageSpec,
                 threshold: float, tpr: float = 0.95, tuned_on: dict[str, Any] | None = None) -> None:
        super().__init__(model, method_with_role("paper"), (temperature, epsilon), input_spec, threshold, tpr,
                         tuned_on)

    @classmethod
    def fit(cls, model: nn.Module, temperature: float, epsilon: float, input_spec: ImageSpec,  # type: ignore[override]
            in_scores: Any, tpr: float = 0.95, tuned_on: dict[str, Any] | None = None) -> "ODINDetector":
        threshold = threshold_at_tpr(as_scores(in_scores, "in_scores"), tpr)
        return cls(model, temperature, epsilon, input_spec, threshold, tpr, tuned_on=tuned_on)

    @property
    def temperature(self) -> float:
        return self.setting[0]

    @property
    def epsilon(self) -> float:
        return self.setting[1]


def _check_weights(path: Path, recorded: str | None, actual: str, allow_other_weights: bool) -> None:
    """Refuse (or, allowed, warn about) a detector tuned with weights other than the model's; warn about one that
    does not say which weights it was tuned with."""
    if recorded is None:
        warnings.warn(f"detector {path} records no tuned_on.weights_sha256, so it cannot be checked against these "
                      f"weights (SHA-256 {actual}): its threshold holds only if it was tuned with them", stacklevel=3)
    if recorded is None or recorded == actual:
        return
    message = (f"detector {path} was tuned with the weights of SHA-256 {recorded}, but the model's weights have "
               f"SHA-256 {actual}")
    if not allow_other_weights:
        raise UserError(f"{message}: its threshold and setting do not hold for this model; use the checkpoint it "
                        "was tuned with, or --allow_other_weights true to use it anyway")
    warnings.warn(f"{message}; used anyway (--allow_other_weights)", stacklevel=3)


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
