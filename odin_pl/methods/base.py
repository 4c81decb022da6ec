"""The contract of a detection method: its parameters, what it needs of a batch, its fit, score range, tie order
and batch scoring.

A method scores a :class:`~odin_pl.methods.batch.Batch` for a list of settings at once (a tensor [n_settings, B],
higher = more in-distribution), so that work shared between settings stays shared (ODIN's one gradient per T).
:meth:`Method.needs` declares what the batch must provide for the settings (clean logits, penultimate features
and the classifier, input gradients of declared losses, intermediate layers, seeded stochastic passes); the batch
of a plan computes the union once, lazily. A setting is a tuple of floats, one per parameter in the order of
``params``; a method without parameters has the one setting ``()``.

A method with ``needs_fit`` scores with statistics of in-distribution images: :meth:`Method.fit` computes them
(its fit, a few named tensors) from a :class:`FitData` (features, labels, logits,
predictions, the classifier, further passes), once per run (``odin_pl.protocol.fits``), on the training split or,
with ``fit_split = "heldout"``, on a labelled held-out split; the batch hands them back (``batch.fit(name)``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from itertools import product
from typing import Callable, ClassVar, Iterator, Literal, Mapping, Sequence

from torch import Tensor

from odin_pl.methods.features import Classifier, Fit
from odin_pl.methods.batch import Batch, Needs
from odin_pl.errors import UserError

Setting = tuple[float, ...]
Scan = Callable[[Needs, Sequence[int] | None], Iterator[tuple[Batch, Tensor]]]  # FitData.scan


@dataclass(frozen=True)
class FitData:
    """What a method fits on: one pass over its split's images (the training split, or a labelled held-out split
    for a method whose ``fit_split`` is ``"heldout"``), in index order, row i = image i.

    ``features``: h [n, D] (float64); ``labels`` [n] (int64); ``logits``: the model's [n, N] (float64);
    ``classifier``: g with W and b; ``seed``: the run's seed, for a fit that draws a seeded subset (recorded in it);
    ``scan(needs, indices)``: a further pass over the images (all, or ``indices``)
    that yields (a :class:`~odin_pl.methods.batch.Batch` providing ``needs``, the labels) per batch, for a fit that
    needs more than h and the logits (intermediate layers, a second pass over held-out images); its batches know
    no input std (input steps in normalized units) and no seed (no stochastic passes).
    """

    features: Tensor
    labels: Tensor
    logits: Tensor
    classifier: Classifier
    scan: Scan | None = field(default=None, repr=False)
    seed: int = 0

    @property
    def predictions(self) -> Tensor:
        """argmax of the logits (the first class on ties) [n]."""
        return self.logits.argmax(dim=1)

    def batches(self, needs: Needs, indices: Sequence[int] | None = None) -> Iterator[tuple[Batch, Tensor]]:
        """(batch, labels) of a further pass over the images (see the class docstring)."""
        if self.scan is None:
            raise UserError("this fit has no images to pass over again (fit data made from features alone)")
        return self.scan(needs, indices)


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
    needs_fit: ClassVar[bool] = False
    #: The images a fitted method fits on: the training split, or a labelled held-out in-distribution split (the
    #: DataModule's validation split, else the in-distribution tuning split).
    fit_split: ClassVar[Literal["train", "heldout"]] = "train"
    #: What the run's reports ask the registry for (``odin_pl.methods.registry.method_with_role``):
    #: ``baseline``: the reference of comparisons (the paper's "baseline / ODIN" cells, the paired difference
    #: intervals); ``paper``: the method the ODIN paper studies (its T x epsilon figures and analyses).
    roles: ClassVar[frozenset[str]] = frozenset()
    #: OpenOOD v1.5's search space of the method (``odin_pl.protocol.openood``): parameter name -> values, in the
    #: key order of OpenOOD's sweep (its first key varies fastest in the search); one value per parameter where
    #: OpenOOD searches none (its fixed default). None: OpenOOD has no such method; a method with parameters must
    #: declare it to run under ``--tuning.mode openood`` (one without parameters has the one setting ``()``).
    openood_grid: ClassVar[Mapping[str, tuple[float, ...]] | None] = None
    #: The ID split OpenOOD fits the method on: its training list, or its ID validation list (react, klm,
    #: temp_scaling).
    openood_fit_split: ClassVar[Literal["train", "val"]] = "train"

    @abstractmethod
    def score(self, batch: Batch, settings: Sequence[Setting]) -> Tensor:
        """Scores [len(settings), B] of the batch; higher = more in-distribution."""

    def score_range(self, num_classes: int) -> tuple[float, float]:
        """The interval every score lies in (up to rounding), for a model with ``num_classes`` outputs."""
        return -math.inf, math.inf

    def tie_key(self, setting: Setting) -> tuple:
        """Sort key among settings that tune equally well (FPR at 95% TPR, then AUROC): smallest first."""
        return tuple(setting)

    def needs(self, settings: Sequence[Setting], fit: Fit | None = None) -> Needs:
        """What the batch must provide to score these settings (``fit``: the method's, for a fitted method); by
        default the clean logits."""
        return Needs(logits=True)

    def fit(self, data: FitData, settings: Sequence[Setting]) -> dict[str, Tensor]:
        """The method's fit for these settings from its split's fit data (methods with ``needs_fit``)."""
        raise NotImplementedError(f"method {self.name!r} needs no fit")

    def settings_for_fit(self, settings: Sequence[Setting], fit: Fit) -> tuple[list[Setting], str | None]:
        """The settings this fit can score and a note on those it drops (a ValueError where it cannot score a
        setting that was asked for explicitly); by default all of them, no note."""
        return list(settings), None

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
