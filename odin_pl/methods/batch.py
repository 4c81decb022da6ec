"""The batch: a normalized batch x and what the methods that score it declare they need, each computed once and
only when first used (``Method.needs`` gives a :class:`Needs`; the batch of a plan holds their union).

* The clean forward pass: ``logits`` f(x); with ``features``, through the penultimate features
  (``odin_pl.methods.features``): ``features`` h(x), ``classifier`` g (W, b, the module) and logits = g(h).
* On that same forward graph, for every declared :class:`Loss` (equal keys: one loss, one backward), the input step
      step = sign+(d loss / dx) / std      (sign+ maps 0 to +1, as ODIN's reference code; no std: unscaled)
  (``step(loss)``), so that x_tilde = x - epsilon * step for any epsilon; ``perturbed(loss, epsilons, score, of)``
  scores the logits or the features of every x_tilde in stacked forward batches.
* ``layers(spec)``: the outputs of the modules a :class:`Layers` names, in call order, from forward hooks on that
  forward.
* ``stochastic_logits(n)``: n seeded stochastic passes (the model in eval mode except its dropout modules with
  p > 0), seeded from the run seed and the batch's first global index only.
The batch works under ``torch.inference_mode()`` and ``torch.no_grad()`` (Lightning's validate and test loops)
and never writes ``.grad`` on parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Hashable, Literal, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from odin_pl.methods.features import Classifier, Fit, Fits, feature_model
from odin_pl.errors import NonFiniteScoresError, UserError

StdLike = Sequence[float] | Tensor | None
DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
FORWARD_FEATURES = "forward_features"  # in the recorded layers: the output of the model's forward_features


@dataclass(frozen=True)
class Outputs:
    """The clean forward's outputs on the graph from x, which a :class:`Loss` is a function of: the logits and,
    when the batch goes through the features, h."""

    logits: Tensor
    features: Tensor | None


@dataclass(frozen=True)
class Loss:
    """A scalar of the clean forward (summed over the batch) whose input gradient a method steps against; losses
    with equal ``key`` are one loss (one backward serves every method and setting that declares it), so equal keys
    must mean equal functions."""

    key: Hashable
    of: Callable[[Outputs], Tensor] = field(compare=False, hash=False)


@dataclass(frozen=True)
class Layers:
    """Intermediate outputs a method reads: those of every module that is an instance of one of ``types`` and, with
    ``forward_features``, the output of the model's forward_features, in call order."""

    types: tuple[type[nn.Module], ...] = ()
    forward_features: bool = False


@dataclass(frozen=True)
class Needs:
    """What a method needs of a batch: the clean ``logits``, the penultimate ``features`` (and classifier), the input
    step of each of ``losses``, intermediate ``layers``, and ``passes`` seeded stochastic passes."""

    logits: bool = False
    features: bool = False
    losses: tuple[Loss, ...] = ()
    layers: tuple[Layers, ...] = ()
    passes: int = 0

    def __or__(self, other: "Needs") -> "Needs":
        return Needs(self.logits or other.logits, self.features or other.features,
                     tuple(dict.fromkeys(self.losses + other.losses)), tuple(dict.fromkeys(self.layers + other.layers)),
                     max(self.passes, other.passes))

    @property
    def through_features(self) -> bool:
        """Whether the clean forward goes through the penultimate features."""
        return self.features or any(spec.forward_features for spec in self.layers)

    @property
    def clean_forward(self) -> bool:
        return self.logits or self.through_features or bool(self.losses) or bool(self.layers)


def non_finite_error(scores: Mapping[str, Tensor], where: str,
                     settings: Mapping[str, Sequence[tuple[float, ...]]]) -> NonFiniteScoresError | None:
    """The error to raise when some of the scores (per method, [len(settings), B]) are NaN or infinite, naming
    where, which methods and how many; None when all are finite. When a method's scores are finite at some of its
    settings, the others are named as too large (they overflow the network, e.g. a huge epsilon); else the weights
    are suspected."""
    rows = {name: ~torch.isfinite(t.reshape(len(settings[name]), -1)) for name, t in scores.items()}
    bad = ", ".join(f"{int(r.sum())} of {name}" for name, r in rows.items() if bool(r.any()))
    if not bad:
        return None
    overflowing = {name: [s for s, row in zip(settings[name], r.any(dim=1).tolist()) if row]
                   for name, r in rows.items() if bool(r.any()) and not bool(r.any(dim=1).all())}
    if overflowing:
        named = "; ".join(f"{name} at {', '.join(map(str, s[:3]))}" for name, s in overflowing.items())
        return NonFiniteScoresError(f"{where}: non-finite scores (NaN or Inf): {bad}, only at some settings ({named}) "
                                    "while the others are finite: these values overflow the network's outputs; use "
                                    "smaller ones")
    return NonFiniteScoresError(f"{where}: the model gives non-finite scores (NaN or Inf): {bad}; its weights may be "
                                "corrupt (check the checkpoint or retrain) - no metric or decision is made from them")


def check_model_in_eval(model: nn.Module) -> None:
    if model.training:
        raise UserError("the model is in training mode: call model.eval() before scoring "
                        "(methods score the deployed network; dropout and batch-norm updates would change the scores)")


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


def model_forward(model: nn.Module, x: Tensor) -> Tensor:
    """model(x), or a UserError when the model cannot take x."""
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


@torch.no_grad()
def perturbed_rows(
    score: Callable[[Tensor], Tensor], x: Tensor, step: Tensor, epsilons: Sequence[float],
    forward_batch_size: int | None = None,
) -> Tensor:
    """score(x - epsilon * step) (a function of images: a score per image) for every epsilon, as a tensor
    [len(epsilons), B].

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


@dataclass(frozen=True)
class _Clean:
    """The clean forward's results (detached): logits, h (or None), the steps by loss key, the layer outputs."""

    logits: Tensor
    features: Tensor | None
    steps: Mapping[Hashable, Tensor]
    layers: Sequence[tuple[nn.Module | str, Tensor]]


class Batch:
    """A normalized batch x and what ``needs`` declares (see the module docstring), computed on first use.

    ``forward_batch_size``: the most images per forward pass of perturbed copies (default: the batch size).
    ``fits``: the fits of the plan's fitted methods (``fit(name)``). ``seed`` and ``start`` (the run seed and the
    batch's first global index) seed the stochastic passes.
    """

    def __init__(self, model: nn.Module, x: Tensor, input_std: StdLike = None, forward_batch_size: int | None = None,
                 *, needs: Needs = Needs(logits=True), fits: Fits | None = None, seed: int | None = None,
                 start: int | None = None) -> None:
        check_model_in_eval(model)
        check_images(x, model)
        self.model, self.x, self.input_std, self.forward_batch_size = model, x, input_std, forward_batch_size
        self.needs, self.fits, self.seed, self.start = needs, fits, seed, start
        self._std = std_view(input_std, x)
        self._clean: _Clean | None = None
        self._passes: Tensor | None = None

    def _declared(self, what: str, declared: bool) -> None:
        if not declared:
            raise KeyError(f"the batch was not asked for {what}: declare it in the method's needs()")

    @property
    def logits(self) -> Tensor:
        """f(x) [B, N] of the clean forward."""
        self._declared("the logits", self.needs.clean_forward)
        return self._forward().logits

    @property
    def features(self) -> Tensor:
        """The penultimate features h(x) [B, D] of the clean forward."""
        self._declared("the penultimate features", self.needs.through_features)
        return self._forward().features

    @property
    def classifier(self) -> Classifier:
        """The model's classifier g (logits = g(h)), with W and b."""
        self._declared("the classifier", self.needs.through_features)
        return feature_model(self.model).classifier

    def step(self, loss: Loss) -> Tensor:
        """sign+(d loss / dx) / std, shaped as x."""
        self._declared(f"the input gradient of the loss {loss.key!r}", loss in self.needs.losses)
        return self._forward().steps[loss.key]

    def layers(self, spec: Layers) -> list[Tensor]:
        """The outputs of the modules ``spec`` names, in call order (detached)."""
        self._declared(f"the layers {spec}", spec in self.needs.layers)
        return [out for module, out in self._forward().layers
                if (spec.forward_features if isinstance(module, str) else isinstance(module, spec.types))]

    def perturbed(self, loss: Loss, epsilons: Sequence[float], score: Callable[[Tensor], Tensor],
                  of: Literal["logits", "features"] = "logits") -> Tensor:
        """score(the logits, or h, of x - epsilon * step(loss)) (a score per image) for every epsilon, as a tensor
        [len(epsilons), B] (see :func:`perturbed_rows`)."""
        step = self.step(loss)
        if of == "features":
            self._declared("the penultimate features", self.needs.through_features)
            forward = feature_model(self.model).features
        else:
            def forward(z: Tensor) -> Tensor:
                return model_forward(self.model, z)
        return perturbed_rows(lambda z: score(forward(z)), self.x, step, epsilons, self.forward_batch_size)

    def stochastic_logits(self, passes: int) -> Tensor:
        """Logits [passes, B, N] of the first ``passes`` seeded stochastic passes (see :func:`stochastic_logits`);
        every method gets the same passes."""
        self._declared(f"{passes} stochastic passes", 0 < passes <= self.needs.passes)
        if self._passes is None:
            self._passes = stochastic_logits(self.model, self.x, self.needs.passes, self.seed, self.start)
        return self._passes[:passes]

    def fit(self, method: str) -> Fit:
        """The fit of ``method`` (a batch made with ``fits``)."""
        if self.fits is None:
            raise KeyError(f"method {method!r} needs its fit on the training images: make the batch with fits")
        return self.fits.of(method)

    def _forward(self) -> _Clean:
        if self._clean is None:
            self._clean = self._clean_forward()
        return self._clean

    def _clean_forward(self) -> _Clean:
        """One forward of x (through the features when needed, with hooks on the layers asked for) and one backward
        per loss on its graph."""
        needs, model = self.needs, self.model
        features = feature_model(model) if needs.through_features else None
        types = tuple(dict.fromkeys(t for spec in needs.layers for t in spec.types))
        recorded: list[tuple[nn.Module | str, Tensor]] = []
        maps = any(spec.forward_features for spec in needs.layers)

        def forward(z: Tensor) -> tuple[Tensor | None, Tensor]:
            hooks = [module.register_forward_hook(lambda module, args, out: recorded.append((module, out)))
                     for module in model.modules() if types and isinstance(module, types)]
            try:
                if features is None:
                    return None, model_forward(model, z)
                return features.forward(z, (lambda out: recorded.append((FORWARD_FEATURES, out))) if maps else None)
            finally:
                for hook in hooks:
                    hook.remove()

        if needs.losses:
            with torch.inference_mode(False), torch.enable_grad():
                x_leaf = self.x.clone().requires_grad_(True)
                h, logits = forward(x_leaf)
                outputs = Outputs(logits, h)
                steps = sign_steps(x_leaf, [loss.of(outputs) for loss in needs.losses], self._std)
        else:
            with torch.no_grad():
                h, logits = forward(self.x)
            steps = []
        if features is not None:
            features.check_once(self.x, logits)
        return _Clean(logits.detach(), h.detach() if h is not None else None,
                      {loss.key: step for loss, step in zip(needs.losses, steps)},
                      [(module, out.detach() if isinstance(out, Tensor) else out) for module, out in recorded])


def stochastic_seed(seed: int, start: int) -> int:
    """The seed of a batch's stochastic passes: a function of the run seed and the batch's first global index
    only (numpy's SeedSequence of the two), so that scores do not depend on what ran before."""
    if seed < 0 or start < 0:
        raise UserError(f"the seed and the batch's first index must be >= 0, got {seed} and {start}")
    return int(np.random.SeedSequence([seed, start]).generate_state(1, np.uint64)[0] >> np.uint64(1))


@torch.no_grad()
def stochastic_logits(model: nn.Module, x: Tensor, passes: int, seed: int | None, start: int | None) -> Tensor:
    """Logits [passes, B, N] of ``passes`` forward passes of x, one after another, with the model in eval mode except
    its dropout modules with p > 0 (in training mode), the default generator of x's device forked and seeded
    with :func:`stochastic_seed` (the caller's random state is left as it was)."""
    if seed is None or start is None:
        raise UserError("stochastic passes need the run seed and the batch's first global index: pass seed= and "
                        "start= (score_batch), as the protocol does")
    dropouts = [m for m in model.modules() if isinstance(m, DROPOUT) and m.p > 0]
    if not dropouts:
        raise UserError(f"{type(model).__name__} has no dropout module (nn.Dropout*, p > 0): the stochastic passes "
                        "of Monte Carlo dropout would all be the same; drop the method from --methods for this model")
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(stochastic_seed(seed, start))
        for module in dropouts:
            module.train()
        try:
            return torch.stack([model_forward(model, x) for _ in range(passes)])
        finally:
            for module in dropouts:
                module.eval()
