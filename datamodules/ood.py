"""Out-of-distribution sets, by name, converted to an in-distribution image spec and normalized with it.

Every OOD data set yields ``(normalized image, -1)``. ``build_ood_dataset(name, spec)`` builds one by name, or
from any folder of images given by path (named after the folder, see :func:`ood_set_name`); ``register_ood`` adds
a name (the paper's named sets are registered in ``datamodules.ood_natural`` and ``datamodules.ood_sets``).
Synthetic noise (paper, section 4.2) is generated per image from ``SeedSequence([seed, kind, index])``, so any
image can be drawn again alone and two seeds never share images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import lightning.pytorch as pl
import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from datamodules.base import resolve_data_root, seeded_permutation
from datamodules.image_folder import (IMAGE_EXTENSIONS, ArrayImageDataset, ImageFolderDataset, SkippedFiles, Transform,
                                     image_candidate, load_image)
from odin_pl.images import ToSpec, normalize
from odin_pl.fingerprint import FileHashes, array_sha256
from odin_pl.spec import ImageSpec
from odin_pl.errors import UserError

OOD_LABEL = -1
NOISE_KINDS = {"gaussian": 1, "uniform": 2}
Item = TypeVar("Item")


@dataclass(frozen=True)
class OODRequest:
    """What a builder needs: the in-distribution spec, where data live, a seed, an optional image count and
    whether a missing data set may be downloaded (never by default); ``exclude``: folders never read as part of
    a set (the run's own output folder)."""

    spec: ImageSpec
    data_root: Path
    seed: int = 0
    num_images: int | None = None
    download: bool = False
    exclude: tuple[Path, ...] = ()

    def pick(self, items: Sequence[Item]) -> list[Item]:
        """All ``items``, or with ``num_images`` a seeded random subset of that many (seed ``self.seed``), kept
        in their original order: a quick run sees images from the whole set, not its first folder."""
        if self.num_images is None or self.num_images >= len(items):
            return list(items)
        keep = sorted(seeded_permutation(len(items), self.seed)[: self.num_images].tolist())
        return [items[i] for i in keep]


OODBuilder = Callable[[OODRequest], Dataset]
_BUILDERS: dict[str, OODBuilder] = {}


def register_ood(name: str) -> Callable[[OODBuilder], OODBuilder]:
    def decorator(builder: OODBuilder) -> OODBuilder:
        _BUILDERS[name] = builder
        return builder

    return decorator


def available_ood_sets() -> list[str]:
    return sorted(_BUILDERS)


def _folder(name_or_path: str | os.PathLike) -> Path | None:
    """None for a registered name (those win over folders of the same name), else the folder it names; raises
    ValueError when it is neither."""
    if str(name_or_path) in _BUILDERS:
        return None
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        raise UserError(f"unknown OOD set {str(name_or_path)!r}: neither a known set "
                        f"({', '.join(available_ood_sets())}) nor an existing folder of images")
    return path


#: The longest set name (bytes in the file system's encoding): output files are named after the set
#: (``scores/<set>__test.pt``, ``detectors/<set>.<method>.json``, hidden temporary files ...) within 255 bytes.
MAX_SET_NAME_BYTES = 120


def ood_set_name(name_or_path: str | os.PathLike) -> str:
    """The set's name in metric keys (``ood/<set>/...``): a registered name as is, else the folder's own name
    (at most :data:`MAX_SET_NAME_BYTES`).

    Registered names win over folders of the same name; give such a folder as a path (``./gaussian``).
    """
    folder = _folder(name_or_path)
    if folder is None:
        return str(name_or_path)
    name = Path(os.path.abspath(folder)).name  # a link's own name (link a folder to rename it)
    if len(os.fsencode(name)) > MAX_SET_NAME_BYTES:
        raise UserError(f"the OOD folder {folder} has a name of {len(os.fsencode(name))} bytes: output files are "
                        f"named after the set, so its name may have at most {MAX_SET_NAME_BYTES}; link the folder "
                        "under a shorter name (ln -s FOLDER short_name) and give that")
    return name


def check_distinct_names(sets: Sequence[str]) -> None:
    """Refuse two sets with one name (``ood_set_name``: two folders named alike), whose results would share keys,
    and a set given twice (the same name, or the same folder however spelled)."""
    first: dict[str, tuple[str, str]] = {}
    for source in sets:
        name, folder = ood_set_name(source), _folder(source)
        identity = str(source) if folder is None else str(folder.resolve())
        if name in first and first[name][1] == identity:
            raise UserError(f"the OOD set {name!r} is given twice ({first[name][0]} and {source}): give it once")
        if name in first:
            raise UserError(f"two OOD sets are named {name!r} ({first[name][0]} and {source}): results are keyed by "
                            f"the set's name, so rename one of the folders (or link it under another name)")
        first[name] = (str(source), identity)


def build_ood_dataset(name: str | os.PathLike, spec: ImageSpec, data_root: str | Path | None = None, seed: int = 0,
                      num_images: int | None = None, download: bool = False,
                      exclude: Sequence[str | os.PathLike] = ()) -> Dataset:
    """The OOD set ``name`` (a registered name or a folder of images) in the given spec; nothing under the
    ``exclude`` folders is read.

    Raises ValueError for an unknown name or an empty set, FileNotFoundError (DatasetNotFoundError) when a
    registered set's data are missing and ``download`` is false.
    """
    folder = _folder(name)
    if num_images is not None and num_images <= 0:
        raise UserError(f"num_images must be positive, got {num_images}")
    request = OODRequest(spec, resolve_data_root(data_root), seed, num_images, download,
                         tuple(Path(e).expanduser().resolve() for e in exclude))
    dataset = _BUILDERS[str(name)](request) if folder is None else folder_dataset(folder, request)
    if len(dataset) == 0:
        raise UserError(f"the OOD set {str(name)!r} is empty: nothing to evaluate against")
    return dataset


def find_images(folder: str | os.PathLike, exclude: Sequence[Path] = ()) -> list[Path]:
    """Image files under ``folder`` (recursively, sorted; hidden entries ignored), each decoded once here.

    Symbolic links are followed, but a directory reached twice (a link loop such as ``self -> .``, or two links
    to one folder) is read once; the ``exclude`` folders (resolved paths) are not entered. Files that are not
    read (:class:`~datamodules.image_folder.SkippedFiles`: no image extension, not a regular file, cannot be
    decoded) are skipped with one warning per reason that counts them.
    """
    found: list[Path] = []
    skipped = SkippedFiles()
    excluded = {Path(e).resolve() for e in exclude}
    visited: set[tuple[int, int]] = set()
    for directory, subdirs, files in os.walk(folder, followlinks=True):
        stat = os.stat(directory)
        if (stat.st_dev, stat.st_ino) in visited or Path(directory).resolve() in excluded:
            subdirs[:] = []
            continue
        visited.add((stat.st_dev, stat.st_ino))
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for file in sorted(files):
            path = Path(directory) / file
            if image_candidate(path, skipped):
                if _decodable(path):
                    found.append(path)
                else:
                    skipped.add(SkippedFiles.UNDECODABLE, path)
    skipped.warn(Path(folder))
    return found


def _decodable(path: Path) -> bool:
    try:
        load_image(path)
        return True
    except OSError:
        return False


def image_files_dataset(paths: Sequence[Path], transform: Transform) -> Dataset:
    """Image files read on access; yields ``(transform(image), -1)``."""
    return ImageFolderDataset([(path, OOD_LABEL) for path in paths], transform)


def image_array_dataset(images: np.ndarray, transform: Transform) -> Dataset:
    """uint8 images in memory ([N, H, W] or [N, H, W, C]); yields ``(transform(image), -1)``."""
    return ArrayImageDataset(images, np.full(len(images), OOD_LABEL), transform)


def non_empty_folder(folder: Path) -> bool:
    """An ``is_complete`` check for :class:`~datamodules.download.RemoteDataset`: a folder with something in it."""
    return folder.is_dir() and any(folder.iterdir())


def folder_dataset(folder: Path, req: OODRequest, prepare: Callable[[Image.Image], Image.Image] | None = None
                   ) -> Dataset:
    """Every decodable image under ``folder`` (:func:`find_images`, without ``req.exclude``; subset by
    ``req.pick``), passed through ``prepare`` when given, then converted to the spec (grayscale, RGBA, palette ...
    handled) and normalized."""
    paths = find_images(folder, req.exclude)
    if not paths:
        raise UserError(f"no decodable images in the folder {folder}: an OOD folder needs image files (any depth) "
                        f"with one of the extensions {', '.join(IMAGE_EXTENSIONS)}")
    to_spec = ToSpec(req.spec)
    return image_files_dataset(req.pick(paths), to_spec if prepare is None else T.Compose([prepare, to_spec]))


class NoiseDataset(Dataset):
    """Gaussian N(0.5, 1) clipped to [0, 1], or Uniform U[0, 1], i.i.d. per pixel and channel (paper, 4.2)."""

    def __init__(self, kind: str, spec: ImageSpec, num_images: int = 10_000, seed: int = 0) -> None:
        if kind not in NOISE_KINDS:
            raise UserError(f"unknown noise kind {kind!r}; use one of {sorted(NOISE_KINDS)}")
        self.kind, self.spec, self.num_images, self.seed = kind, spec, num_images, seed

    def __len__(self) -> int:
        return self.num_images

    def fingerprint_facts(self, hashes: FileHashes) -> dict[str, Any]:
        """What fixes every image (``odin_pl.fingerprint``): kind, seed, count and image shape."""
        return {"kind": self.kind, "seed": self.seed, "count": self.num_images,
                "shape": [self.spec.channels, self.spec.size, self.spec.size]}

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

    def fingerprint_facts(self, hashes: FileHashes) -> dict[str, Any]:
        """What fixes every image (``odin_pl.fingerprint``): the SHA-256 of each photo's decoded pixels and each
        crop's (photo, box)."""
        return {"photos": [array_sha256(np.asarray(photo)) for photo in self.photos],
                "crops": [[photo_index, list(box)] for photo_index, box in self.boxes]}

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        photo_index, box = self.boxes[index]
        return self.to_spec(self.photos[photo_index].crop(box)), OOD_LABEL


@register_ood("photos")
def _photos(req: OODRequest) -> Dataset:
    return PhotoCropsDataset(req.spec, req.num_images or 2_000, req.seed)


class OODDataModule(pl.LightningDataModule):
    """One OOD set as a DataModule: ``bind(spec)`` to an in-distribution spec, then ``test_dataloader()``.

    ``name`` is a registered set or a folder of images; :attr:`name` is then the set's metric name
    (:func:`ood_set_name`) and :attr:`source` what was given.
    """

    def __init__(self, name: str, data_root: str | None = None, batch_size: int = 256, num_workers: int = 0,
                 seed: int = 0, num_images: int | None = None, download: bool = False) -> None:
        super().__init__()
        self.source, self.name = name, ood_set_name(name)
        self.data_root, self.batch_size, self.download = data_root, batch_size, download
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
            self.dataset = build_ood_dataset(self.source, self.spec, self.data_root, self.seed, self.num_images,
                                             self.download)

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)
