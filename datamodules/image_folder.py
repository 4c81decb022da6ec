"""Images from class folders or in-memory arrays, converted to an image spec; the ImageFolder DataModule."""

from __future__ import annotations

import os
import warnings
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.datasets.folder import IMG_EXTENSIONS

from datamodules.base import DATA_ROOT_ENV, ImageDataModule, seeded_permutation
from datamodules.transforms import ToSpec, pil_to_spec, pil_to_spec_mode
from odin_pl.spec import ImageSpec
from odin_pl.errors import MissingFileError, UserError

Transform = Callable[[Image.Image], Tensor]
Sample = tuple[Path, int]
_PIL_ERRORS = (OSError, SyntaxError, ValueError)  # what Pillow raises for unreadable or truncated files


def spec_transform(spec: ImageSpec, augment: bool = False) -> Transform:
    """PIL image -> normalized tensor in ``spec``.

    With ``augment`` (training), the image (converted and resized to the spec) is first randomly cropped back to
    its size after zero-padding by ``size // 8`` pixels (4 for 32x32) on each side, then flipped horizontally
    with probability 1/2: the usual CIFAR augmentation.
    """
    to_spec = ToSpec(spec)
    if not augment:
        return to_spec
    return T.Compose([partial(pil_to_spec_mode, spec=spec), T.Resize((spec.size, spec.size)),
                      T.RandomCrop(spec.size, padding=spec.size // 8), T.RandomHorizontalFlip(), to_spec])


class ArrayImageDataset(Dataset):
    """uint8 images in memory ([N, H, W] or [N, H, W, C]) and int labels; yields ``(transform(PIL image), label)``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | Sequence[int], transform: Transform) -> None:
        if len(images) != len(labels):
            raise UserError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.transform = images, np.asarray(labels, dtype=np.int64), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


class SpecArrayDataset(Dataset):
    """uint8 images in memory already in the spec's size and channels ([N, H, W] or [N, H, W, C]) and int labels;
    yields ``(normalized tensor [C, H, W], label)`` with tensor operations only (no PIL: the fast path for
    in-distribution arrays).

    ``augment`` applies :func:`spec_transform`'s training augmentation as a function of a 32-bit sample seed s
    (:meth:`seeded_item`; ``dataset[index]`` draws s from torch's global generator): the size x size crop at
    offsets (s mod m, (s // m) mod m), m = 2 * pad + 1, of the image zero-padded by pad = ``size // 8`` on each
    side, then a horizontal flip when (s // m^2) is odd; for a uniform s, uniform crops and flips with
    probability 1/2 (up to a bias below 2 m^2 / 2^32 < 1e-7).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray | Sequence[int], spec: ImageSpec,
                 augment: bool = False) -> None:
        if len(images) != len(labels):
            raise UserError(f"{len(images)} images but {len(labels)} labels")
        pixels = torch.from_numpy(np.ascontiguousarray(images))
        pixels = pixels.unsqueeze(-1) if pixels.dim() == 3 else pixels
        expected = (spec.size, spec.size, spec.channels)
        if tuple(pixels.shape[1:]) != expected:
            raise UserError(f"images of shape {tuple(pixels.shape[1:])} do not match the spec's {expected} "
                            f"(height, width, channels)")
        self.pixels = pixels.permute(0, 3, 1, 2)  # a [N, C, H, W] view
        self.labels, self.augment, self.pad = np.asarray(labels, dtype=np.int64), augment, spec.size // 8
        self.mean = torch.tensor(spec.mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(spec.std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        seed = int(torch.randint(2**32, ())) if self.augment else 0
        return self.seeded_item(index, seed)

    def seeded_item(self, index: int, seed: int) -> tuple[Tensor, int]:
        """Image ``index`` augmented as a function of ``seed`` (0 <= seed < 2**32) only, and its label."""
        x = self.pixels[index].float().div(255)
        if self.augment:
            size, pad = x.shape[-1], self.pad
            m = 2 * pad + 1
            top, left, flip = seed % m, seed // m % m, seed // (m * m) % 2
            x = torch.nn.functional.pad(x, (pad, pad, pad, pad))[:, top:top + size, left:left + size]
            if flip:
                x = x.flip(-1)
        return (x - self.mean) / self.std, int(self.labels[index])


def _readable(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.size  # noqa: B018  Image.open parses the header only
        return True
    except _PIL_ERRORS:
        return False


def scan_image_folder(folder: str | os.PathLike, class_names: Sequence[str] | None = None
                      ) -> tuple[tuple[str, ...], list[Sample]]:
    """Class names and ``(path, label)`` samples of an ImageFolder layout ``folder/<class>/**/<image>``.

    Classes are the sorted subfolder names, or ``class_names`` (labels are indices into it; a subfolder not in
    it is an error). Files with an image extension whose header cannot be read are skipped with one warning that
    counts them. A missing folder, or one without images, raises FileNotFoundError.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"image folder {folder} does not exist; expected {folder}/<class>/<image> "
                               f"(the data root is set with --data_root or {DATA_ROOT_ENV})")
    found = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith("."))
    if class_names is None:
        class_names = found
    unknown = sorted(set(found) - set(class_names))
    if unknown:
        raise UserError(f"{folder} has class folders {unknown} that are not among the classes {list(class_names)}")
    index = {name: i for i, name in enumerate(class_names)}
    samples: list[Sample] = []
    unreadable: list[Path] = []
    for name in found:
        for directory, subdirs, files in os.walk(folder / name, followlinks=True):
            subdirs.sort()
            for file in sorted(files):
                path = Path(directory) / file
                if not file.lower().endswith(IMG_EXTENSIONS):
                    continue
                if _readable(path):
                    samples.append((path, index[name]))
                else:
                    unreadable.append(path)
    if unreadable:
        warnings.warn(f"skipped {len(unreadable)} unreadable image file(s) under {folder} (first: {unreadable[0]})",
                      stacklevel=2)
    if not samples:
        raise MissingFileError(f"no images found in {folder}: expected {folder}/<class>/<image> with one of the "
                               f"extensions {', '.join(IMG_EXTENSIONS)}")
    return tuple(class_names), samples


def load_image(path: Path) -> Image.Image:
    """Read an image fully into memory; a clear OSError names the file when it cannot be decoded."""
    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            image.load()
        return image
    except _PIL_ERRORS as exc:
        raise OSError(f"cannot read image {path}: {exc}") from exc


def decode_images(paths: Sequence[Path], spec: ImageSpec) -> np.ndarray:
    """Every file decoded once into memory, in the spec's channels and size: uint8 [N, size, size, C] ([N, size,
    size] for one channel)."""
    return np.stack([np.asarray(pil_to_spec(load_image(path), spec)) for path in paths])


class ImageFolderDataset(Dataset):
    """``(path, label)`` samples read on access; yields ``(transform(image), label)``."""

    def __init__(self, samples: Sequence[Sample], transform: Transform) -> None:
        self.samples, self.transform = list(samples), transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.samples[index]
        return self.transform(load_image(path)), label


def image_statistics(paths: Sequence[Path], size: int, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of [0, 1] pixels of ``paths``, converted to ``channels`` and resized."""
    to_pixels = ToSpec(ImageSpec(size=size, channels=channels, mean=(0.0,) * channels, std=(1.0,) * channels))
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for path in paths:
        pixels = to_pixels(load_image(path)).double().flatten(1)
        total += pixels.sum(1)
        total_sq += pixels.square().sum(1)
    count = len(paths) * size * size
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


class ImageFolderSplits:
    """The training and test folders of an ImageFolder layout, each scanned once (:func:`scan_image_folder`).

    Labels index the training classes; test class folders must be among them.
    """

    def __init__(self, train_folder: Path, test_folder: Path) -> None:
        self.folders = {True: train_folder, False: test_folder}
        self._classes: tuple[str, ...] = ()
        self._samples: dict[bool, list[Sample]] = {}

    @property
    def class_names(self) -> tuple[str, ...]:
        self.samples(True)
        return self._classes

    def samples(self, train: bool) -> list[Sample]:
        """The ``(path, label)`` samples of the training or test folder."""
        if train not in self._samples:
            classes, self._samples[train] = scan_image_folder(self.folders[train], None if train else self.class_names)
            self._classes = self._classes or classes
        return self._samples[train]


class ImageFolderDataModule(ImageDataModule):
    """Any ImageFolder layout: ``<data_root>/<train_dir>/<class>/*`` and ``<data_root>/<test_dir>/<class>/*``.

    Class names are the sorted training subfolders; test subfolders must be among them. Images are converted to
    ``channels`` (grayscale, RGBA, palette ... handled) and resized to ``image_size``. When ``mean`` and ``std``
    are not given they are computed from a seeded sample of ``stats_images`` training images and written back to
    the hyperparameters, so a checkpoint rebuilds the same normalization. ``augment`` applies random crop + flip
    to training images. ``name`` (default: the folder above ``train_dir``) names the data set in the spec.
    """

    def __init__(self, data_root: str | None = None, train_dir: str = "train", test_dir: str = "test",
                 image_size: int = 32, channels: int = 3, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, stats_images: int = 2000, augment: bool = True,
                 name: str | None = None, batch_size: int = 128, eval_batch_size: int | None = None,
                 num_workers: int = 0, val_split: float = 0.0, seed: int = 0) -> None:
        super().__init__(data_root=data_root, batch_size=batch_size, eval_batch_size=eval_batch_size,
                         num_workers=num_workers, val_split=val_split, seed=seed)
        if channels not in (1, 3):
            raise UserError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
        if (mean is None) != (std is None):
            raise UserError("give both mean and std, or neither (then they are computed from training images)")
        if stats_images <= 0:
            raise UserError(f"stats_images must be positive, got {stats_images}")
        self.save_hyperparameters()
        self.splits = ImageFolderSplits(self.data_root / train_dir, self.data_root / test_dir)
        self.image_size, self.channels, self.augment = image_size, channels, augment
        self.stats_images = stats_images
        self.dataset_name = name or (self.data_root / train_dir).resolve().parent.name
        self._stats = None if mean is None else (tuple(mean), tuple(std))
        self._spec: ImageSpec | None = None

    @property
    def image_spec(self) -> ImageSpec:
        if self._spec is None:
            train = self.splits.samples(True)
            if self._stats is None:
                order = seeded_permutation(len(train), self.seed)[: self.stats_images].tolist()
                self._stats = image_statistics([train[i][0] for i in order], self.image_size, self.channels)
                self.hparams.update(mean=list(self._stats[0]), std=list(self._stats[1]))
            self._spec = ImageSpec(size=self.image_size, channels=self.channels, mean=self._stats[0],
                                   std=self._stats[1], class_names=self.splits.class_names, dataset=self.dataset_name)
        return self._spec

    def load_split(self, train: bool, augment: bool) -> Dataset:
        return ImageFolderDataset(self.splits.samples(train),
                                  spec_transform(self.image_spec, augment and self.augment))
