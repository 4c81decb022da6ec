"""Out-of-distribution sets, by name, converted to an in-distribution image spec and normalized with it.

Every OOD data set yields ``(normalized image, -1)``. ``build_ood_dataset(name, spec)`` builds one by name;
``register_ood`` adds a name. Synthetic noise (paper, section 4.2) is generated per image from
``SeedSequence([seed, kind, index])``, so any image can be drawn again alone and two seeds never share images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import lightning.pytorch as pl
import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from datamodules.base import resolve_data_root
from datamodules.transforms import ToSpec, normalize
from odin_pl.spec import ImageSpec

OOD_LABEL = -1
NOISE_KINDS = {"gaussian": 1, "uniform": 2}


@dataclass(frozen=True)
class OODRequest:
    """What a builder needs: the in-distribution spec, where data live, a seed and an optional image count."""

    spec: ImageSpec
    data_root: Path
    seed: int = 0
    num_images: int | None = None


OODBuilder = Callable[[OODRequest], Dataset]
_BUILDERS: dict[str, OODBuilder] = {}


def register_ood(name: str) -> Callable[[OODBuilder], OODBuilder]:
    def decorator(builder: OODBuilder) -> OODBuilder:
        _BUILDERS[name] = builder
        return builder

    return decorator


def available_ood_sets() -> list[str]:
    return sorted(_BUILDERS)


def build_ood_dataset(name: str, spec: ImageSpec, data_root: str | Path | None = None, seed: int = 0,
                      num_images: int | None = None) -> Dataset:
    """The OOD set ``name`` in the given spec; raises ValueError for an unknown name or an empty set."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown OOD set {name!r}; known sets: {', '.join(available_ood_sets())}")
    if num_images is not None and num_images <= 0:
        raise ValueError(f"num_images must be positive, got {num_images}")
    dataset = _BUILDERS[name](OODRequest(spec, resolve_data_root(data_root), seed, num_images))
    if len(dataset) == 0:
        raise ValueError(f"the OOD set {name!r} is empty: nothing to evaluate against")
    return dataset


class NoiseDataset(Dataset):
    """Gaussian N(0.5, 1) clipped to [0, 1], or Uniform U[0, 1], i.i.d. per pixel and channel (paper, 4.2)."""

    def __init__(self, kind: str, spec: ImageSpec, num_images: int = 10_000, seed: int = 0) -> None:
        if kind not in NOISE_KINDS:
            raise ValueError(f"unknown noise kind {kind!r}; use one of {sorted(NOISE_KINDS)}")
        self.kind, self.spec, self.num_images, self.seed = kind, spec, num_images, seed

    def __len__(self) -> int:
        return self.num_images

    def pixels(self, index: int) -> Tensor:
        """The image ``index`` in [0, 1], before normalization."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, NOISE_KINDS[self.kind], index]))
        shape = (self.spec.channels, self.spec.size, self.spec.size)
        if self.kind == "gaussian":
            values = np.clip(rng.normal(0.5, 1.0, size=shape), 0.0, 1.0)
        else:
            values = rng.uniform(0.0, 1.0, size=shape)
        return torch.from_numpy(values.astype(np.float32))

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if not 0 <= index < self.num_images:
            raise IndexError(index)
        return normalize(self.pixels(index), self.spec), OOD_LABEL


@register_ood("gaussian")
def _gaussian(req: OODRequest) -> Dataset:
    return NoiseDataset("gaussian", req.spec, req.num_images or 10_000, req.seed)


@register_ood("uniform")
def _uniform(req: OODRequest) -> Dataset:
    return NoiseDataset("uniform", req.spec, req.num_images or 10_000, req.seed)


class PhotoCropsDataset(Dataset):
    """Seeded random square crops of scikit-learn's sample photos (a Chinese temple and a flower).

    Real natural-image patches that ship with scikit-learn: the quickstart's offline OOD set. Crops are
    ``crop_size`` pixels (default: the larger of 32 and the spec size), then converted to the spec.
    """

    def __init__(self, spec: ImageSpec, num_images: int = 2_000, seed: int = 0, crop_size: int | None = None) -> None:
        from sklearn.datasets import load_sample_images

        self.photos = [Image.fromarray(image) for image in load_sample_images().images]
        self.crop_size = crop_size or max(32, spec.size)
        rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
        which = rng.integers(0, len(self.photos), size=num_images)
        self.boxes = []
        for photo_index in which:
            width, height = self.photos[photo_index].size
            left = int(rng.integers(0, width - self.crop_size + 1))
            top = int(rng.integers(0, height - self.crop_size + 1))
            self.boxes.append((int(photo_index), (left, top, left + self.crop_size, top + self.crop_size)))
        self.to_spec = ToSpec(spec)

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        photo_index, box = self.boxes[index]
        return self.to_spec(self.photos[photo_index].crop(box)), OOD_LABEL


@register_ood("photos")
def _photos(req: OODRequest) -> Dataset:
    return PhotoCropsDataset(req.spec, req.num_images or 2_000, req.seed)


class OODDataModule(pl.LightningDataModule):
    """One OOD set as a DataModule: ``bind(spec)`` to an in-distribution spec, then ``test_dataloader()``."""

    def __init__(self, name: str, data_root: str | None = None, batch_size: int = 256, num_workers: int = 0,
                 seed: int = 0, num_images: int | None = None) -> None:
        super().__init__()
        if name not in _BUILDERS:
            raise ValueError(f"unknown OOD set {name!r}; known sets: {', '.join(available_ood_sets())}")
        self.name, self.data_root, self.batch_size = name, data_root, batch_size
        self.num_workers, self.seed, self.num_images = num_workers, seed, num_images
        self.spec: ImageSpec | None = None
        self.dataset: Dataset | None = None

    def bind(self, spec: ImageSpec, data_root: str | Path | None = None) -> "OODDataModule":
        """Use ``spec`` (and the in-distribution data root, unless this module has its own)."""
        if spec != self.spec:
            self.spec, self.dataset = spec, None
        self.data_root = self.data_root or data_root
        return self

    def setup(self, stage: str | None = None) -> None:
        if self.spec is None:
            raise RuntimeError(f"OOD set {self.name!r}: call bind(image_spec) before setup()")
        if self.dataset is None:
            self.dataset = build_ood_dataset(self.name, self.spec, self.data_root, self.seed, self.num_images)

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)
