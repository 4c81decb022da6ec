"""The contract of a detection method: its parameters, score range, tie order and batch scoring.

A method scores a :class:`~odin_pl.methods.batch.Batch` for a list of settings at once (a tensor [n_settings, B],
higher = more in-distribution), so that work shared between settings stays shared (ODIN's one gradient per T),
and the batch carries what all methods share (one clean forward pass). A setting is a tuple of floats, one per
parameter in the order of ``params``; a method without parameters has the one setting ``()``.

A method with ``needs_fit`` scores the penultimate features h with statistics of the in-distribution training
split: :meth:`Method.fit` computes them (its fit, a few named tensors) from the training features, once per run
(``odin_pl.protocol.fits``), and the batch hands them back (``batch.fit(name)``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from itertools import product
from typing import ClassVar, Mapping, Sequence

from torch import Tensor

from odin_pl.methods.features import Fit
from odin_pl.methods.batch import Batch, FeatureLoss
from odin_pl.errors import UserError

Setting = tuple[float, ...]


@dataclass(frozen=True)
class Param:
    """One parameter: its name (``--params method.name=value``), its label in tables and notes, its default grid,
    and a natural lower bound (``floor``) at which a choice is not flagged as lying on the grid's edge."""

    name: str
    label: str
    values: tuple[float, ...]
    floor: float | None = None


class Method(ABC):
    """A detection method; subclasses are registered with :func:`odin_pl.methods.register_method`."""

    name: ClassVar[str]
    params: ClassVar[tuple[Param, ...]] = ()
    needs_input_gradient: ClassVar[bool] = False
    needs_fit: ClassVar[bool] = False
    #: What the run's reports ask the registry for (``odin_pl.methods.registry.method_with_role``):
    #: ``baseline``: the reference of comparisons (the paper's "baseline / ODIN" cells, the paired difference
    #: intervals); ``paper``: the method the ODIN paper studies (its T x epsilon figures and analyses).
    roles: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def score(self, batch: Batch, settings: Sequence[Setting]) -> Tensor:
        """Scores [len(settings), B] of the batch; higher = more in-distribution."""

    def score_range(self, num_classes: int) -> tuple[float, float]:
        """The interval every score lies in (up to rounding), for a model with ``num_classes`` outputs."""
        return -math.inf, math.inf

    def tie_key(self, setting: Setting) -> tuple:
        """Sort key among settings that tune equally well (FPR at 95% TPR, then AUROC): smallest first."""
        return tuple(setting)

    def gradient_temperatures(self, settings: Sequence[Setting]) -> list[float]:
        """The temperatures whose input gradient the batch must hold for these settings."""
        return []

    def fit(self, features: Tensor, labels: Tensor, settings: Sequence[Setting]) -> dict[str, Tensor]:
        """The method's fit for these settings from the training features h [N, D] (float64) and labels [N]
        (methods with ``needs_fit``)."""
        raise NotImplementedError(f"method {self.name!r} needs no fit")

    def settings_for_fit(self, settings: Sequence[Setting], fit: Fit) -> tuple[list[Setting], str | None]:
        """The settings this fit can score and a note on those it drops (a ValueError where it cannot score a
        setting that was asked for explicitly); by default all of them, no note."""
        return list(settings), None

    def feature_loss(self, settings: Sequence[Setting], fit: Fit) -> FeatureLoss | None:
        """A function of the features h whose input gradient the batch must hold for these settings (the batch's
        ``feature_step(name)``), or None."""
        return None

    def check_setting(self, setting: Sequence[float]) -> Setting:
        """The setting as a tuple of floats, or a ValueError that names the method's parameters."""
        setting = tuple(float(v) for v in setting)
        if len(setting) != len(self.params):
            names = ", ".join(p.name for p in self.params) or "none"
            raise UserError(f"method {self.name!r} takes {len(self.params)} parameter(s) ({names}), "
                            f"got {len(setting)}: {setting}")
        return setting

    def grid(self, values: Mapping[str, Sequence[float]] | None = None) -> list[Setting]:
        """Every setting of the grid (the parameters' default values, or ``values`` per parameter), in the
        product order of ``params``."""
        values = dict(values or {})
        unknown = set(values) - {p.name for p in self.params}
        if unknown:
            raise UserError(f"method {self.name!r} has no parameter {', '.join(sorted(unknown))}; its parameters: "
                            f"{', '.join(p.name for p in self.params) or 'none'}")
        axes = [tuple(float(v) for v in values.get(p.name, p.values)) for p in self.params]
        if any(not axis for axis in axes):
            raise UserError(f"method {self.name!r}: every parameter needs at least one grid value")
        return [self.check_setting(s) for s in product(*axes)]

    def default_setting(self) -> Setting:
        """The first setting of the default grid in the tie order."""
        return min(self.grid(), key=self.tie_key)

    def named(self, setting: Setting) -> dict[str, float]:
        """``{parameter name: value}`` of a setting (the fields of a result record)."""
        return dict(zip((p.name for p in self.params), setting))
