"""Detection methods by name: ``create_method("energy")``, ``list_methods()``, ``register_method``.

Adding a method is one file (a :class:`Method` subclass decorated with ``@register_method``) and one import line
below. :func:`score_batch` scores one batch for several methods, sharing the forward pass between them.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from torch import Tensor, nn

from odin_pl.methods.base import Method, Param, Setting
from odin_pl.methods.registry import create_method, list_methods, register_method
from odin_pl.scoring import Batch, StdLike

from odin_pl.methods import msp, odin, energy, maxlogit, entropy  # noqa: E402,F401,I001  (registers them)

Plan = Mapping[str, Sequence[Setting]]  # method name -> the settings to score


def score_batch(model: nn.Module, x: Tensor, plan: Plan, input_std: StdLike = None,
                forward_batch_size: int | None = None) -> dict[str, Tensor]:
    """Scores [len(settings), B] per method of ``plan`` for the normalized batch x: one forward pass for all of
    them, and one input gradient per temperature that some method needs."""
    methods = {name: create_method(name) for name in plan}
    settings = {name: [methods[name].check_setting(s) for s in plan[name]] for name in plan}
    temperatures = [t for name, method in methods.items() for t in method.gradient_temperatures(settings[name])]
    batch = Batch(model, x, input_std, temperatures, forward_batch_size)
    return {name: method.score(batch, settings[name]) for name, method in methods.items()}


__all__ = ["Method", "Param", "Plan", "Setting", "create_method", "list_methods", "register_method", "score_batch"]
