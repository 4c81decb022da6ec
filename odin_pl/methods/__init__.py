"""Detection methods by name: ``create_method("energy")``, ``list_methods()``, ``register_method``.

Adding a method is one file (a :class:`Method` subclass decorated with ``@register_method``) and one import line
below. :func:`score_batch` scores one batch for several methods, sharing the forward pass between them.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from torch import Tensor, nn

from odin_pl.methods.features import Fits
from odin_pl.methods.base import Method, Param, Setting
from odin_pl.methods.registry import create_method, default_methods, list_methods, method_with_role, register_method
from odin_pl.methods.batch import Batch, StdLike

from odin_pl.methods import msp, odin, energy, maxlogit, entropy, mahalanobis, react, knn  # noqa: E402,F401,I001
from odin_pl.errors import UserError

Plan = Mapping[str, Sequence[Setting]]  # method name -> the settings to score


def method_batch(model: nn.Module, x: Tensor, methods: Mapping[str, tuple[Method, Sequence[Setting]]],
                 input_std: StdLike = None, forward_batch_size: int | None = None, fits: Fits | None = None
                 ) -> Batch:
    """The :class:`Batch` of x holding what ``methods`` (name -> (method, its settings)) need: one forward pass
    (through the penultimate features when a method needs a fit: ``fits``), one input gradient per temperature and
    per feature loss that some method asks for."""
    fitted = [name for name, (method, _) in methods.items() if method.needs_fit]
    if fitted and fits is None:
        raise UserError(f"method(s) {', '.join(fitted)} score with a fit on the in-distribution training images: "
                        "pass fits (odin_pl.protocol.fits.prepare_fits makes them, as evaluate.py does)")
    temperatures = [t for method, settings in methods.values() for t in method.gradient_temperatures(settings)]
    losses = {name: loss for name in fitted
              if (loss := methods[name][0].feature_loss(methods[name][1], fits.of(name))) is not None}
    return Batch(model, x, input_std, temperatures, forward_batch_size, fits=fits if fitted else None,
                 feature_losses=losses)


def score_batch(model: nn.Module, x: Tensor, plan: Plan, input_std: StdLike = None,
                forward_batch_size: int | None = None, fits: Fits | None = None) -> dict[str, Tensor]:
    """Scores [len(settings), B] per method of ``plan`` for the normalized batch x: one forward pass for all of
    them, and one input gradient per temperature (and feature loss) that some method needs. ``fits``: the fits
    of the plan's methods with ``needs_fit``."""
    methods = {name: create_method(name) for name in plan}
    settings = {name: [methods[name].check_setting(s) for s in plan[name]] for name in plan}
    batch = method_batch(model, x, {name: (methods[name], settings[name]) for name in plan}, input_std,
                         forward_batch_size, fits)
    return {name: method.score(batch, settings[name]) for name, method in methods.items()}


__all__ = ["Method", "Param", "Plan", "Setting", "create_method", "default_methods", "list_methods", "method_batch",
           "method_with_role", "register_method", "score_batch"]
