"""What a protocol run does, fixed before any scoring: its methods (each with its grid and fixed setting, created and
checked once), the tuning mode, the tuning set of ``transfer`` mode, the tuning size and the seed of the splits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

from odin_pl.errors import UserError
from odin_pl.methods import Method, Setting, create_method
from odin_pl.protocol.tuning import PAPER_TUNING_SIZE

TuningMode = Literal["paper", "transfer", "cross", "fixed", "openood"]
#: The ODIN paper's modes (``odin_pl.protocol.run``) and OpenOOD v1.5's protocol (``odin_pl.protocol.openood``).
MODES: tuple[str, ...] = ("paper", "transfer", "cross", "fixed", "openood")


@dataclass(frozen=True)
class MethodGrid:
    """A method of a protocol run (created and checked once): the settings it is tuned over (its grid, in the
    product order of its parameters) and the one it uses in fixed mode (default: the grid's first in the method's
    tie order)."""

    method: Method
    settings: tuple[Setting, ...]
    fixed: Setting | None = None

    @property
    def name(self) -> str:
        return self.method.name

    @classmethod
    def of(cls, name: str, values: Mapping[str, Sequence[float]] | None = None,
           fixed: Sequence[float] | None = None) -> "MethodGrid":
        """The method's grid (its default values, or ``values`` per parameter) and fixed setting."""
        method = create_method(name)
        settings = tuple(method.grid(values))
        return cls(method, settings, method.check_setting(fixed) if fixed is not None else
                   min(settings, key=method.tie_key))

    @property
    def tuned(self) -> bool:
        return len(self.settings) > 1

    def axes(self) -> dict[str, list[float]]:
        """Per parameter (by name), its grid values in grid order."""
        return {param.name: list(dict.fromkeys(setting[i] for setting in self.settings))
                for i, param in enumerate(self.method.params)}


@dataclass(frozen=True)
class ProtocolPlan:
    """A protocol run's methods and tuning (see :mod:`odin_pl.protocol.run` for the modes).

    ``tune_on``: the one tuning set of ``transfer`` mode; ``n_tune``: tuning images per set (half of a set smaller
    than twice this); ``seed``: the seed of the splits.
    """

    methods: tuple[MethodGrid, ...]
    mode: TuningMode = "paper"
    tune_on: str | None = None
    n_tune: int = PAPER_TUNING_SIZE
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(self.methods))
        if not self.methods:
            raise UserError("no method to evaluate: give at least one (see odin_pl.methods.list_methods())")
        if self.mode not in MODES:
            raise UserError(f"unknown mode {self.mode!r}; use one of {', '.join(MODES)}")
        if (self.mode == "transfer") != (self.tune_on is not None):
            raise UserError("a tuning set (tune_on) goes with mode 'transfer', and only with it")
        if self.n_tune < 1:
            raise UserError(f"the tuning size must be positive, got {self.n_tune}")

    @property
    def tuned(self) -> list[MethodGrid]:
        """The methods whose setting is chosen on tuning images (none in fixed mode)."""
        return [m for m in self.methods if m.tuned] if self.mode != "fixed" else []

    def method(self, name: str) -> MethodGrid | None:
        """The run's grid of the method ``name``, or None when it does not evaluate it."""
        return next((m for m in self.methods if m.name == name), None)
