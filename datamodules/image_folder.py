"""Images from class folders or in-memory arrays, converted to an image spec; the ImageFolder DataModule."""

from __future__ import annotations

import os
import stat
import warnings
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.datasets.folder import IMG_EXTENSIONS

from datamodules.base import DATA_ROOT_ENV, ImageDataModule, seeded_permutation
from odin_pl.images import ToSpec, pil_to_spec, pil_to_spec_mode, standard_mode
from odin_pl.spec import ImageSpec
from odin_pl.errors import MissingFileError, UserError

Transform = Callable[[Image.Image], Tensor]
Sample = tuple[Path, int]
_PIL_ERRORS = (OSError, SyntaxError, ValueError)  # what Pillow raises for unreadable or truncated files
#: The file name endings read as images: torchvision's list and GIF (its first frame; see :func:`load_image`).
IMAGE_EXTENSIONS = (*IMG_EXTENSIONS, ".gif")


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


class SkippedFiles:
    """Files of a folder walk that are not read, by reason; :meth:`warn` says so once per reason, counting them
    (nothing is left out without a word; hidden files alone are passed over silently)."""

    UNDECODABLE = "image file(s) that cannot be decoded"
    NOT_REGULAR = "file(s) that are not regular files (named pipes, devices, broken links: only regular files are read)"
    NOT_IMAGES = f"file(s) without an image extension ({', '.join(IMAGE_EXTENSIONS)})"

    def __init__(self) -> None:
        self.files: dict[str, list[Path]] = {}

    def add(self, reason: str, path: Path) -> None:
        self.files.setdefault(reason, []).append(path)

    def warn(self, folder: Path) -> None:
        for reason, paths in self.files.items():
            warnings.warn(f"skipped {len(paths)} {reason.replace('(s) ', f'(s) under {folder} ', 1)} (first: "
                          f"{paths[0]})", stacklevel=3)


def image_candidate(path: Path, skipped: SkippedFiles) -> bool:
    """Whether ``path`` is to be read as an image: not hidden, an image extension, a regular file (following
    links). Other files are recorded in ``skipped`` (hidden ones are not)."""
    if path.name.startswith("."):
        return False
    if not path.name.lower().endswith(IMAGE_EXTENSIONS):
        skipped.add(SkippedFiles.NOT_IMAGES, path)
        return False
    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except OSError:  # a broken link
        regular = False
    if not regular:
        skipped.add(SkippedFiles.NOT_REGULAR, path)
    return regular


@contextmanager
def _regular_file(path: Path) -> Iterator[BinaryIO]:
    """``path`` open for reading when it is a regular file (checked on the open file: a named pipe never blocks);
    an OSError otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path} is not a regular file")
    with os.fdopen(fd, "rb") as handle:
        yield handle


def _bomb_error(path: Path, err: Exception) -> UserError:
    return UserError(f"image {path} is too large to decode safely ({err}); remove it from the folder or shrink it")


def _readable(path: Path) -> bool:
    try:
        with _regular_file(path) as f, Image.open(f) as image:
            image.size  # noqa: B018  Image.open parses the header only
        return True
    except Image.DecompressionBombError as err:
        raise _bomb_error(path, err) from err
    except _PIL_ERRORS:
        return False


def scan_image_folder(folder: str | os.PathLike, class_names: Sequence[str] | None = None
                      ) -> tuple[tuple[str, ...], list[Sample]]:
    """Class names and ``(path, label)`` samples of an ImageFolder layout ``folder/<class>/**/<image>``.

    Classes are the sorted subfolder names, or ``class_names`` (labels are indices into it; a subfolder not in
    it is an error). Files that are not read (no image extension, not a regular file, a header that cannot be
    read: :class:`SkippedFiles`) are skipped with one warning per reason that counts them. A missing folder, or one
    without images, raises FileNotFoundError.
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
    skipped = SkippedFiles()
    for name in found:
        for directory, subdirs, files in os.walk(folder / name, followlinks=True):
            subdirs.sort()
            for file in sorted(files):
                path = Path(directory) / file
                if not image_candidate(path, skipped):
                    continue
                if _readable(path):
                    samples.append((path, index[name]))
                else:
                    skipped.add(SkippedFiles.UNDECODABLE, path)
    skipped.warn(folder)
    if not samples:
        raise MissingFileError(f"no images found in {folder}: expected {folder}/<class>/<image> with one of the "
                               f"extensions {', '.join(IMAGE_EXTENSIONS)}")
    return tuple(class_names), samples


def load_image(path: Path) -> Image.Image:
    """The picture a viewer shows of the file ``path``, fully in memory as 8-bit ``L`` or ``RGB``: the first frame
    of an animated file (GIF, APNG, WebP), turned as its EXIF orientation says, in the mode given by
    :func:`~odin_pl.images.standard_mode`. A file that cannot be decoded (or is not a regular file) is an
    OSError naming it; one over Pillow's pixel limit (``Image.MAX_IMAGE_PIXELS``, a decompression bomb) or without
    a rule for its values is a UserError naming it."""
    try:
        with _regular_file(path) as f:
            image = Image.open(f)
            image.load()  # the first frame
    except Image.DecompressionBombError as err:
        raise _bomb_error(path, err) from err
    except _PIL_ERRORS as exc:
        raise OSError(f"cannot read image {path}: {exc}") from exc
    try:
        return standard_mode(ImageOps.exif_transpose(image))
    except UserError as err:
        raise UserError(f"image {path}: {err}") from err


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
