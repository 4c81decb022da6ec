"""The in-distribution image spec: what every input of a trained classifier looks like."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence
from odin_pl.errors import UserError


@dataclass(frozen=True)
class ImageSpec:
    """Size, channels and per-channel normalization of a classifier's inputs.

    Pixels in [0, 1] are normalized as ``(x - mean[c]) / std[c]``; OOD sets are converted to this spec
    (size, channels) and normalized with these statistics so that they look like test inputs.
    """

    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = field(default=())
    dataset: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        if self.size <= 0 or self.channels <= 0:
            raise UserError(f"ImageSpec needs a positive size and channel count, got size={self.size}, "
                            f"channels={self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise UserError(f"ImageSpec has {self.channels} channels but {len(self.mean)} means and "
                            f"{len(self.std)} stds: give one mean and one std per channel")
        if any(s <= 0 for s in self.std):
            raise UserError(f"ImageSpec std must be positive, got {self.std}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | "ImageSpec") -> "ImageSpec":
        if isinstance(data, ImageSpec):
            return data
        return cls(**{k: tuple(v) if isinstance(v, Sequence) and not isinstance(v, str) else v
                      for k, v in data.items()})
