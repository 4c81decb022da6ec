"""ODIN scoring: temperature scaling plus input perturbation (Liang, Li, Srikant, ICLR 2018, section 3).

For logits f(x) of a batch x that is already normalized with per-channel (mean, std):

    y_hat   = argmax_i f_i(x)
    g       = d/dx  sum_b CE(f(x_b) / T, y_hat_b)              (= -grad_x log S_y_hat(x; T))
    s       = +1 where g >= 0 else -1, divided channel-wise by std when it is known
    x_tilde = x - epsilon * s
    score   = max_i softmax(f(x_tilde) / T)_i                   (higher = more in-distribution)

epsilon = 0 needs no gradient; T = 1, epsilon = 0 is the MSP baseline of Hendrycks & Gimpel (2017).
The functions work under ``torch.inference_mode()`` and ``torch.no_grad()`` (Lightning's validate and test
loops) and never write ``.grad`` on parameters.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from odin_pl.methods.features import Fit, Fits
from odin_pl.errors import NonFiniteScoresError, UserError

StdLike = Sequence[float] | Tensor | None
FeatureLoss = Callable[[Tensor], Tensor]  # penultimate features h [B, D] -> a scalar summed over the batch


def check_temperature(temperature: float) -> None:
    if not (float(temperature) > 0 and torch.isfinite(torch.tensor(float(temperature)))):
        raise UserError(f"temperature must be a finite number > 0, got {temperature!r} "
                        "(the paper's grid is 1, 2, 5, ..., 1000; T = 1 is no scaling)")


def check_epsilon(epsilon: float) -> None:
    if not (float(epsilon) >= 0 and torch.isfinite(torch.tensor(float(epsilon)))):
        raise UserError(f"epsilon must be a finite number >= 0, got {epsilon!r} "
                        "(the perturbation size in [0, 1] pixel units; 0 turns perturbation off)")


def non_finite_error(scores: Mapping[str, Tensor], where: str) -> NonFiniteScoresError | None:
    """The error to raise when some of the scores (per method) are NaN or infinite, naming where, which methods
    and how many; None when all are finite."""
    counts = {name: int((~torch.isfinite(t)).sum()) for name, t in scores.items()}
    bad = ", ".join(f"{count} of {name}" for name, count in counts.items() if count)
    if not bad:
        return None
    return NonFiniteScoresError(f"{where}: the model gives non-finite scores (NaN or Inf): {bad}; its weights may be "
                                "corrupt (check the checkpoint or retrain) - no metric or decision is made from them")


def check_model_in_eval(model: nn.Module) -> None:
    if model.training:
        raise UserError("the model is in training mode: call model.eval() before scoring "
                        "(ODIN scores the deployed network; dropout and batch-norm updates would change them)")


def check_images(x: Tensor, model: nn.Module | None = None) -> None:
    """Raise a ValueError that names the problem when x is not a finite [B, C, H, W] batch the model accepts."""
    if not isinstance(x, Tensor):
        raise TypeError(f"expected a tensor of images, got {type(x).__name__}")
    if x.dim() != 4:
        raise UserError(f"expected a batch of images of shape [B, C, H, W], got shape {tuple(x.shape)}; "
                        "add a batch dimension with x.unsqueeze(0) for a single image")
    if not x.is_floating_point():
        raise UserError(f"expected floating-point images (normalized), got dtype {x.dtype}")
    bad = (~torch.isfinite(x)).sum().item()
    if bad:
        raise UserError(f"the input contains {bad} NaN or Inf values; check the data pipeline "
                        "(normalization with a zero std, corrupt images)")
    parameter = next(model.parameters(), None) if model is not None else None
    if parameter is not None and parameter.is_floating_point() and x.dtype != parameter.dtype:
        raise UserError(f"the images are {x.dtype} but the model's weights are {parameter.dtype}: convert the images "
                        f"(x.to({parameter.dtype})) or the model (model.to({x.dtype}))")
    spec = getattr(model, "image_spec", None)
    if spec is not None:
        expected = (spec.channels, spec.size, spec.size)
        if tuple(x.shape[1:]) != expected:
            raise UserError(f"the model expects images of shape [B, {expected[0]}, {expected[1]}, {expected[2]}] "
                            f"(its image spec), got {tuple(x.shape)}; convert the images to the spec first")


def std_view(input_std: StdLike, x: Tensor) -> Tensor | None:
    if input_std is None:
        return None
    std = torch.as_tensor(input_std, dtype=x.dtype, device=x.device).flatten()
    if std.numel() != x.shape[1]:
        raise UserError(f"input_std has {std.numel()} values but the images have {x.shape[1]} channels; "
                        "give one std per channel")
    if not bool((std > 0).all()):
        raise UserError(f"input_std must be positive, got {std.tolist()}")
    return std.view(1, -1, 1, 1)


def max_softmax(logits: Tensor, temperature: float) -> Tensor:
    """S(x; T) = max_i softmax(f(x) / T)_i for each row of logits."""
    return torch.softmax(logits / temperature, dim=1).amax(dim=1)


def _forward(model: nn.Module, x: Tensor) -> Tensor:
    try:
        return model(x)
    except RuntimeError as err:
        raise UserError(f"the model failed on input of shape {tuple(x.shape)} (wrong channel count or image "
                        f"size?): {err}") from err


def sign_steps(x_leaf: Tensor, losses: Sequence[Tensor], std: Tensor | None) -> list[Tensor]:
    """For each scalar loss of one forward graph on the leaf x, the input step sign+(d loss / dx) / std (sign+ maps
    0 to +1, as ODIN's reference code; ``std`` as from :func:`std_view`, or None), so that x_tilde = x - epsilon *
    step for any epsilon. The graph is kept until the last loss."""
    steps = []
    for i, loss in enumerate(losses):
        (grad,) = torch.autograd.grad(loss, x_leaf, retain_graph=i < len(losses) - 1)
        step = torch.where(grad >= 0, 1.0, -1.0).to(x_leaf.dtype)
        steps.append(step / std if std is not None else step)
    return steps


def odin_loss(logits: Tensor, temperature: float) -> Tensor:
    """sum_b CE(f(x_b) / T, y_hat_b) with y_hat = argmax f(x): the loss whose input gradient ODIN steps against."""
    return F.cross_entropy(logits / temperature, logits.argmax(dim=1), reduction="sum")


@torch.no_grad()
def perturbed_rows(
    score: Callable[[Tensor], Tensor], x: Tensor, step: Tensor, epsilons: Sequence[float],
    forward_batch_size: int | None = None,
) -> Tensor:
    """score(x - epsilon * step) (a score per image) for every epsilon, as a tensor [len(epsilons), B].

    The perturbed copies of several epsilons are stacked into forward batches of up to
    ``forward_batch_size`` images (default: the batch size) to keep the device busy.
    """
    batch = x.shape[0]
    per_chunk = max(1, (forward_batch_size or batch) // max(batch, 1))
    eps = torch.as_tensor(list(epsilons), dtype=x.dtype, device=x.device)
    out = []
    for start in range(0, len(eps), per_chunk):
        chunk = eps[start:start + per_chunk].view(-1, 1, 1, 1, 1)
        x_tilde = (x.unsqueeze(0) - chunk * step.unsqueeze(0)).flatten(0, 1)
        out.append(score(x_tilde).view(len(chunk), batch))
    return torch.cat(out) if out else x.new_zeros(0, batch)


def perturbed_scores(
    model: nn.Module, x: Tensor, step: Tensor, temperature: float, epsilons: Sequence[float],
    forward_batch_size: int | None = None,
) -> Tensor:
    """S(x - epsilon * step; T) for every epsilon, as a tensor [len(epsilons), B] (see :func:`perturbed_rows`)."""
    return perturbed_rows(lambda z: max_softmax(_forward(model, z), temperature), x, step, epsilons,
                          forward_batch_size)


class Batch:
    """A normalized batch x and the work that scoring methods share on it (see ``odin_pl.methods``).

    ``logits``: f(x) from one forward pass, for every method and setting that scores the clean input.
    ``step(T)``: ODIN's input step for temperature T (one backward each, on that same forward's graph), for the
    ``gradient_temperatures`` asked for when the batch was made.
    ``forward_batch_size``: the most images per forward pass of perturbed copies (default: the batch size).

    With ``fits`` (for the methods fitted on training features), the forward pass goes through the penultimate
    features: ``features`` is h(x) and ``logits`` the classifier applied to it (``fits.model`` checks once that
    they reproduce the model); ``feature_step(name)`` is the input step sign+(d loss / dx) / std of each of the
    ``feature_losses`` (functions of h), on the same graph; ``fit(name)`` is a method's fit.
    """

    def __init__(self, model: nn.Module, x: Tensor, input_std: StdLike = None,
                 gradient_temperatures: Sequence[float] = (), forward_batch_size: int | None = None, *,
                 fits: Fits | None = None, feature_losses: Mapping[str, FeatureLoss] | None = None) -> None:
        check_model_in_eval(model)
        check_images(x, model)
        self.model, self.x, self.input_std, self.forward_batch_size = model, x, input_std, forward_batch_size
        self.fits = fits
        temperatures = list(dict.fromkeys(float(t) for t in gradient_temperatures))
        feature_losses = dict(feature_losses or {})
        if feature_losses and fits is None:
            raise UserError("feature losses need the model's features: pass fits")
        std = std_view(input_std, x)

        def forward(z: Tensor) -> tuple[Tensor | None, Tensor]:
            return fits.model(z) if fits is not None else (None, _forward(model, z))

        if temperatures or feature_losses:
            with torch.inference_mode(False), torch.enable_grad():
                x_leaf = x.clone().requires_grad_(True)
                h, logits = forward(x_leaf)
                losses = [odin_loss(logits, t) for t in temperatures] + [loss(h) for loss in feature_losses.values()]
                steps = sign_steps(x_leaf, losses, std)
        else:
            with torch.no_grad():
                h, logits = forward(x)
            steps = []
        self.logits = logits.detach()
        self._features = h.detach() if h is not None else None
        self._steps = dict(zip(temperatures, steps))
        self._feature_steps = dict(zip(feature_losses, steps[len(temperatures):]))

    def step(self, temperature: float) -> Tensor:
        if float(temperature) not in self._steps:
            raise KeyError(f"no input gradient at T = {temperature}: pass it in gradient_temperatures")
        return self._steps[float(temperature)]

    @property
    def features(self) -> Tensor:
        """The penultimate features h(x) [B, D] (a batch made with ``fits``)."""
        if self._features is None:
            raise KeyError("this batch has no penultimate features: make it with fits")
        return self._features

    def feature_step(self, name: str) -> Tensor:
        if name not in self._feature_steps:
            raise KeyError(f"no input gradient of the feature loss {name!r}: pass it in feature_losses")
        return self._feature_steps[name]

    def fit(self, method: str) -> Fit:
        """The fit of ``method`` on the training features (a batch made with ``fits``)."""
        if self.fits is None:
            raise KeyError(f"method {method!r} needs its fit on the training images: make the batch with fits")
        return self.fits.of(method)


def odin_gradient_temperatures(settings: Sequence[tuple[float, float]]) -> list[float]:
    """The distinct temperatures of the settings that perturb the input (epsilon > 0)."""
    return list(dict.fromkeys(float(t) for t, e in settings if e > 0))


def odin_rows(batch: Batch, settings: Sequence[tuple[float, float]]) -> Tensor:
    """ODIN scores [len(settings), B] of a batch: epsilon = 0 from its clean logits, every other setting from
    the perturbed input along its temperature's step (one gradient per T serves all its epsilons)."""
    out = batch.x.new_empty(len(settings), batch.x.shape[0])
    for row, (temperature, epsilon) in enumerate(settings):
        if epsilon == 0:
            out[row] = max_softmax(batch.logits, temperature)
    for temperature in odin_gradient_temperatures(settings):
        rows = [i for i, (t, e) in enumerate(settings) if float(t) == temperature and e > 0]
        out[rows] = perturbed_scores(batch.model, batch.x, batch.step(temperature), temperature,
                                     [settings[i][1] for i in rows], batch.forward_batch_size)
    return out


def score_settings(
    model: nn.Module, x: Tensor, settings: Sequence[tuple[float, float]], input_std: StdLike = None,
    forward_batch_size: int | None = None,
) -> Tensor:
    """Scores of the batch x for several (T, epsilon) settings at once, as a tensor [len(settings), B].

    Work is shared: one forward pass gives the clean logits (all settings with epsilon = 0) and the graph
    for one input gradient per distinct T with some epsilon > 0; each such gradient serves all its epsilons.
    """
    for temperature, epsilon in settings:
        check_temperature(temperature)
        check_epsilon(epsilon)
    batch = Batch(model, x, input_std, odin_gradient_temperatures(settings), forward_batch_size)
    return odin_rows(batch, settings)


def odin_score(
    model: nn.Module, x: Tensor, temperature: float = 1000.0, epsilon: float = 0.0014,
    input_std: StdLike = None,
) -> Tensor:
    """ODIN score S(x_tilde; T) of each image in the normalized batch x (shape [B]); higher = in-distribution.

    ``input_std``: the per-channel std used to normalize x, so that epsilon is a step in [0, 1] pixel units.
    """
    return score_settings(model, x, [(temperature, epsilon)], input_std)[0]


def msp_score(model: nn.Module, x: Tensor) -> Tensor:
    """Maximum softmax probability (Hendrycks & Gimpel, 2017): ODIN with T = 1 and epsilon = 0."""
    return odin_score(model, x, temperature=1.0, epsilon=0.0)
