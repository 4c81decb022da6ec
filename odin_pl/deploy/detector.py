"""A deployable detector: a classifier, a method with its tuned setting, the input spec and a decision threshold.

``Detector.fit(model, data, method, params)`` scores in-distribution images (and fits a fitted method on training
images) and sets the threshold at a target TPR (:func:`odin_pl.metrics.threshold_at_tpr`: the largest delta with
mean(scores >= delta) >= tpr); ``Detector.from_scores`` sets it from scores computed before. ``predict(x)``
flags ``score < threshold`` as OOD, and ``save`` / ``load`` keep everything but the model's weights in a small,
human-readable JSON file (format version 2: the method's name and its parameters by name, as the method declares
them). A detector of a fitted method records its fit file (relative to the detector file) and that file's SHA-256,
and refuses to load when the file changed. :class:`ODINDetector` is the detector of the paper's method (the
registry's role ``paper``) with its parameters (T, epsilon) as arguments. :func:`score` scores a batch with any
registered method, no detector needed.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from odin_pl.methods.features import Fits
from odin_pl.files import atomic_write
from odin_pl.images import transforms
from odin_pl.protocol.fits import SavedFit, fit_data, load_fit, save_fit
from odin_pl.methods import Batch, Method, Needs, Setting, create_method, method_with_role
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
        self.setting: Setting = _setting(self.method, params)
        _check_model_fits(model, input_spec)
        self.model = model
        self.input_spec = input_spec
        self.threshold, self.tpr = self._checked(threshold, tpr)
        self.tuned_on = dict(tuned_on or {})
        self.fit_file, self.fits = fit, _detector_fits(self.method, self.setting, model, fit)
        self.baseline = create_method(method_with_role("baseline"))

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
    def from_scores(cls, model: nn.Module, method: str, params: Mapping[str, float] | Sequence[float],
                    input_spec: ImageSpec, in_scores: Any, tpr: float = 0.95, tuned_on: dict[str, Any] | None = None,
                    fit: SavedFit | None = None) -> "Detector":
        """A detector whose threshold keeps at least ``tpr`` of the in-distribution ``in_scores`` (the method's
        scores at this setting)."""
        threshold = threshold_at_tpr(as_scores(in_scores, "in_scores"), tpr)
        return _typed(Detector(model, method, params, input_spec, threshold, tpr, tuned_on=tuned_on, fit=fit))

    @classmethod
    def fit(cls, model: nn.Module, data: Dataset | DataLoader, method: str | None = None,
            params: Mapping[str, float] | Sequence[float] | None = None, *, tpr: float = 0.95,
            spec: ImageSpec | None = None, fit_on: Dataset | None = None, fit_file: str | Path | None = None,
            batch_size: int = 256, tuned_on: dict[str, Any] | None = None) -> "Detector":
        """A detector of ``method`` (default: the paper's) at ``params`` (by name or in order; default: the
        method's default setting) whose threshold keeps ``tpr`` of the in-distribution images ``data`` (a Dataset
        or DataLoader of normalized (image, label)). A fitted method first fits on the training images ``fit_on``
        and saves the fit to ``fit_file`` (the detector file records it). ``spec``: the images' spec, when the
        model has no ``image_spec``."""
        created = create_method(method or method_with_role("paper"))
        spec = spec or getattr(model, "image_spec", None)
        if not isinstance(spec, ImageSpec):
            raise UserError("the image spec is unknown: give Detector.fit(..., spec=ImageSpec(...)) for a model "
                            "without an `image_spec`")
        setting = created.default_setting() if params is None else _setting(created, params)
        saved = None
        if created.needs_fit:
            if fit_on is None or fit_file is None:
                raise UserError(f"method {created.name!r} fits on in-distribution training images: give "
                                "Detector.fit(..., fit_on=TRAINING_DATASET, fit_file=PATH.pt)")
            made = created.fit(fit_data(model, fit_on, batch_size=batch_size, device=_device(model)), [setting])
            context = {"n_images": len(fit_on), "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}
            saved = save_fit(Path(fit_file), created.name, [setting], context, made)
        fits = _detector_fits(created, setting, model, saved)
        loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=batch_size)
        in_scores = torch.cat([_method_scores(model, created, setting, spec.std, fits, x)
                               for x in _images(loader, model)])
        detector = Detector.from_scores(model, created.name, setting, spec, in_scores, tpr, tuned_on=tuned_on,
                                        fit=saved)
        if cls is ODINDetector and not isinstance(detector, ODINDetector):
            raise UserError(f"ODINDetector is the detector of {method_with_role('paper')!r}; use Detector.fit for "
                            f"{created.name!r}")
        return detector

    def fit_threshold(self, in_scores: Any, tpr: float = 0.95) -> float:
        """Set and return the threshold: the ceil(tpr * n)-th largest in-distribution score."""
        self.threshold, self.tpr = self._checked(threshold_at_tpr(as_scores(in_scores, "in_scores"), tpr), tpr)
        return self.threshold

    def score(self, x: Tensor) -> Tensor:
        """The method's scores [B] of a normalized batch (higher = more in-distribution)."""
        return _method_scores(self.model, self.method, self.setting, self.input_spec.std, self.fits, x)

    def score_loader(self, loader: Iterable[Any]) -> Tensor:
        """The scores of every image of ``loader`` (batches of normalized images, or (images, labels)), in order,
        on the model's device and dtype."""
        return torch.cat([self.score(x) for x in _images(loader, self.model)])

    def predict_images(self, images: Sequence[str | Path | Image.Image]) -> Detection:
        """The detections of image files or PIL images, prepared as the evaluation prepares every image
        (:func:`odin_pl.images.transforms` of the detector's spec)."""
        prepare = transforms(self.input_spec)
        return self.predict_all(next(iter(_images([torch.stack([prepare(_open(image)) for image in images])],
                                                  self.model))))

    def predict_all(self, x: Tensor) -> Detection:
        """Class from the clean logits, the baseline's score, the method's score and OOD flag of each image; one
        forward pass on x (and the method's own, such as the perturbed x)."""
        fit = self.fits.of(self.method.name) if self.fits is not None else None
        needs = self.method.needs([self.setting], fit) | self.baseline.needs([self.baseline.default_setting()]) \
            | Needs(logits=True)
        batch = Batch(self.model, x, self.input_spec.std, needs=needs, fits=self.fits)
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
        detector = _typed(Detector(model, method, params, spec, *rest, fit=fit))
        if cls is ODINDetector and not isinstance(detector, ODINDetector):
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
    def from_scores(cls, model: nn.Module, temperature: float, epsilon: float,  # type: ignore[override]
                    input_spec: ImageSpec, in_scores: Any, tpr: float = 0.95,
                    tuned_on: dict[str, Any] | None = None) -> "ODINDetector":
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


def _typed(detector: Detector) -> Detector:
    """An :class:`ODINDetector` for the paper's method, else the detector itself."""
    if detector.method.name != method_with_role("paper") or isinstance(detector, ODINDetector):
        return detector
    return ODINDetector(detector.model, *detector.setting, detector.input_spec, detector.threshold, detector.tpr,
                        detector.tuned_on)


def _setting(method: Method, params: Mapping[str, float] | Sequence[float]) -> Setting:
    """A setting given by parameter name or in the method's order, checked."""
    if isinstance(params, Mapping):
        names = [p.name for p in method.params]
        if set(params) != set(names):
            raise UserError(f"method {method.name!r} takes the parameters ({', '.join(names) or 'none'}), got "
                            f"({', '.join(params) or 'none'})")
        params = [params[name] for name in names]
    return method.check_setting(params)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _detector_fits(method: Method, setting: Setting, model: nn.Module, fit: SavedFit | None) -> Fits | None:
    """The fit of a fitted method on ``model``'s features (None for other methods), checked to match."""
    name = method.name
    if not method.needs_fit:
        if fit is not None:
            raise UserError(f"method {name!r} needs no fit; got the fit file {fit.path}")
        return None
    if fit is None:
        raise UserError(f"method {name!r} scores with a fit on the training images: pass fit= (evaluate.py "
                        f"saves it to <output_dir>/fits/{name}.pt), or use Detector.fit(..., fit_on=...)")
    if fit.method != name:
        raise UserError(f"the fit file {fit.path} is the fit of {fit.method!r}, not of {name!r}")
    method.settings_for_fit([setting], fit.tensors)
    return Fits({name: {key: t.to(_device(model)) for key, t in fit.tensors.items()}})


def _method_scores(model: nn.Module, method: Method, setting: Setting, std: Any, fits: Fits | None,
                   x: Tensor) -> Tensor:
    """The method's scores [B] of the normalized batch x at ``setting``."""
    fit = fits.of(method.name) if fits is not None else None
    batch = Batch(model, x, std, needs=method.needs([setting], fit), fits=fits)
    return method.score(batch, [setting])[0]


def _images(loader: Iterable[Any], model: nn.Module) -> Iterable[Tensor]:
    """The image batches of a loader of images or of (images, labels), on the model's device and dtype."""
    parameter = next(model.parameters())
    for batch in loader:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        yield x.to(device=parameter.device, dtype=parameter.dtype)


def _open(image: str | Path | Image.Image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    path = Path(image)
    if not path.is_file():
        raise MissingFileError(f"image {path} does not exist")
    try:
        with Image.open(path) as opened:
            opened.load()
            return opened.copy()
    except (OSError, SyntaxError, ValueError) as err:
        raise UserError(f"{path} is not a readable image ({err})") from err


def score(model: nn.Module, x: Tensor, method: str, *, std: Any = None, fit: SavedFit | None = None,
          **params: float) -> Tensor:
    """Any registered method's scores [B] of the normalized batch x (higher = more in-distribution), at
    ``params`` by name (a parameter left out takes the method's default setting's value); ``std``: the input
    normalization's std (default: the model's ``image_spec``), which makes perturbation steps steps in pixels.
    A fitted method needs ``fit`` (a saved fit: ``Detector.fit(..., fit_on=...)`` or evaluate.py's fits/)."""
    created = create_method(method)
    defaults = dict(zip((p.name for p in created.params), created.default_setting()))
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise UserError(f"method {method!r} has no parameter {', '.join(unknown)}; its parameters: "
                        f"{', '.join(defaults) or 'none'}")
    setting = _setting(created, {**defaults, **params})
    if std is None and getattr(model, "image_spec", None) is not None:
        std = model.image_spec.std
    return _method_scores(model, created, setting, std, _detector_fits(created, setting, model, fit), x)
