"""Detection methods by name: ``create_method("energy")``, ``list_methods()``, ``register_method``.

Adding a method is one file (a :class:`Method` subclass decorated with ``@register_method``) and one import line
below. :func:`score_batch` scores one batch for several methods: the batch computes the union of what they
declare they need (:meth:`Method.needs`) once.
"""

from __future__ import annotations

from functools import reduce
from operator import or_
from typing import Mapping, Sequence

from torch import Tensor, nn

from odin_pl.methods.features import Fits
from odin_pl.methods.base import FitData, Method, Param, Setting
from odin_pl.methods.registry import create_method, default_methods, list_methods, method_with_role, register_method
from odin_pl.methods.batch import Batch, Layers, Loss, Needs, Outputs, StdLike

from odin_pl.methods import msp, odin, energy, maxlogit, entropy, mahalanobis, react, knn  # noqa: E402,F401,I001
from odin_pl.methods import vim, rmds, gen, ash, scale, she, klm, dice, gradnorm, fdbd  # noqa: E402,F401,I001
from odin_pl.methods import nnguide, gram, openmax, mcd, tempscale  # noqa: E402,F401,I001
from odin_pl.errors import UserError

Plan = Mapping[str, Sequence[Setting]]  # method name -> the settings to score


def method_batch(model: nn.Module, x: Tensor, methods: Mapping[str, tuple[Method, Sequence[Setting]]],
                 input_std: StdLike = None, forward_batch_size: int | None = None, fits: Fits | None = None, *,
                 seed: int | None = None, start: int | None = None) -> Batch:
    """The :class:`Batch` of x that provides what ``methods`` (name -> (method, its settings)) need (``fits``: the
    fits of those with ``needs_fit``; ``seed`` and ``start``, the run seed and the batch's first global index, for
    stochastic passes)."""
    fitted = [name for name, (method, _) in methods.items() if method.needs_fit]
    if fitted and fits is None:
        raise UserError(f"method(s) {', '.join(fitted)} score with a fit on the in-distribution training images: "
                        "pass fits (odin_pl.protocol.fits.prepare_fits makes them, as evaluate.py does)")
    needs = reduce(or_, (method.needs(settings, fits.of(name) if method.needs_fit else None)
                         for name, (method, settings) in methods.items()), Needs())
    return Batch(model, x, input_std, forward_batch_size, needs=needs, fits=fits if fitted else None, seed=seed,
                 start=start)


def score_batch(model: nn.Module, x: Tensor, plan: Plan, input_std: StdLike = None,
                forward_batch_size: int | None = None, fits: Fits | None = None, *, seed: int | None = None,
                start: int | None = None) -> dict[str, Tensor]:
    """Scores [len(settings), B] per method of ``plan`` for the normalized batch x, from one batch that provides
    what they need (see :func:`method_batch`)."""
    methods = {name: create_method(name) for name in plan}
    settings = {name: [methods[name].check_setting(s) for s in plan[name]] for name in plan}
    batch = method_batch(model, x, {name: (methods[name], settings[name]) for name in plan}, input_std,
                         forward_batch_size, fits, seed=seed, start=start)
    return {name: method.score(batch, settings[name]) for name, method in methods.items()}


__all__ = ["Batch", "FitData", "Layers", "Loss", "Method", "Needs", "Outputs", "Param", "Plan", "Setting",
           "create_method", "default_methods", "list_methods", "method_batch", "method_with_role", "register_method",
           "score_batch"]
