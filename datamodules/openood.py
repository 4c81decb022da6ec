"""OpenOOD v1.5's image lists and test-time preprocessing (``openood/datasets/imglist_dataset.py``,
``openood/evaluation_api/preprocessor.py``).

A list is a text file of lines ``<relpath> <label>``, split at the first space; the path is relative to the
images folder (``<data_root>/images_classic/`` or ``<data_root>/images_largescale/``), the label a class index
or -1 for OOD images. Images are opened with truncated files allowed and converted to RGB (``Image.convert``:
grayscale replicated, alpha dropped), then preprocessed the same way for every split, without augmentation:
Resize of the shorter side to ``pre_size`` (bilinear), CenterCrop ``crop_size``, ToTensor, Normalize; ImageNet-C
images (already cropped) get ToTensor and Normalize only.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageFile
from torch import Tensor
from torchvision import transforms as T

from datamodules.image_folder import ImageFolderDataset, Transform
from odin_pl.errors import UserError
from odin_pl.spec import ImageSpec

OOD_LABEL = -1
ListEntry = tuple[str, int]
_TRUNCATED = threading.Lock()  # Pillow reads LOAD_TRUNCATED_IMAGES as a module global


def read_image_list(path: str | Path) -> list[ListEntry]:
    """The ``(relpath, label)`` entries of an OpenOOD list, in file order.

    Each line is split at its first space; the path must be relative and the label an integer. A blank line, a
    line without a label or an absolute path is an error naming the file and line (OpenOOD fails on them too).
    """
    path = Path(path)
    entries: list[ListEntry] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            relpath, _, label = line.rstrip("\r\n").partition(" ")
            try:
                value = int(label)
            except ValueError:
                raise UserError(f"{path}, line {number}: expected '<relpath> <label>' with an integer label, got "
                                f"{line.rstrip()!r}") from None
            if not relpath or relpath.startswith("/"):
                raise UserError(f"{path}, line {number}: the image path {relpath!r} must be relative to the images "
                                "folder")
            entries.append((relpath, value))
    if not entries:
        raise UserError(f"the image list {path} is empty")
    return entries


def load_openood_image(path: Path) -> Image.Image:
    """The image at ``path`` in RGB, read as OpenOOD reads it (``ImageFile.LOAD_TRUNCATED_IMAGES = True``)."""
    try:
        with _TRUNCATED:
            allowed, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, True
            try:
                with open(path, "rb") as handle:
                    image = Image.open(handle)
                    image.load()
            finally:
                ImageFile.LOAD_TRUNCATED_IMAGES = allowed
        return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:
        raise OSError(f"cannot read image {path}: {exc}") from exc


@dataclass(frozen=True)
class Preprocessing:
    """OpenOOD's test-time preprocessing of one benchmark (``default_preprocessing_dict``)."""

    pre_size: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def image_spec(self, dataset: str, class_names: Sequence[str] = ()) -> ImageSpec:
        """The spec of the images this preprocessing makes: RGB, ``crop_size`` square, OpenOOD's mean/std."""
        return ImageSpec(size=self.crop_size, channels=3, mean=self.mean, std=self.std,
                         class_names=tuple(class_names), dataset=dataset)

    def transform(self, spec: ImageSpec, resize: bool = True) -> Transform:
        """RGB PIL image -> [3, crop, crop] tensor normalized with ``spec``'s mean/std (a model's own, or this
        benchmark's from :meth:`image_spec`); ``resize=False`` for ImageNet-C (ToTensor + Normalize only).

        The spec must take RGB images of ``crop_size``: OpenOOD fixes the size per benchmark.
        """
        if spec.channels != 3 or spec.size != self.crop_size:
            raise UserError(f"OpenOOD's benchmark feeds {self.crop_size}x{self.crop_size} RGB images, but the model "
                            f"takes {spec.size}x{spec.size} images with {spec.channels} channel(s): evaluate a model "
                            "trained on this benchmark's input size")
        steps = [T.Resize(self.pre_size, interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(self.crop_size)]
        return T.Compose([*(steps if resize else []), T.ToTensor(), T.Normalize(spec.mean, spec.std)])


class ImageListDataset(ImageFolderDataset):
    """``(path, label)`` samples (from a list, or a folder of OOD images) read as OpenOOD reads them; yields
    ``(transform(image), label)`` and refuses an image that does not come out as [3, size, size]."""

    def __init__(self, samples: Sequence[tuple[Path, int]], transform: Transform, size: int) -> None:
        super().__init__(samples, transform)
        self.size = size

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.samples[index]
        image = self.transform(load_openood_image(path))
        if tuple(image.shape) != (3, self.size, self.size):
            raise UserError(f"{path} gives an image of shape {tuple(image.shape)}, expected (3, {self.size}, "
                            f"{self.size}): ImageNet-C images must already be {self.size}x{self.size}")
        return image, label
