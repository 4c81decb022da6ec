"""The paper's natural-image OOD sets for CIFAR models: TinyImageNet (crop) and (resize), LSUN (crop) and (resize),
iSUN (names ``tin_crop``, ``tin_resize``, ``lsun_crop``, ``lsun_resize``, ``isun``).

Each is the folder of 32x32 images in the paper's released archive, extracted into ``<data_root>/odin/``:

=============== ======================== ==============================================
name            archive                  image folder
=============== ======================== ==============================================
``tin_crop``    Imagenet.tar.gz          ``<data_root>/odin/Imagenet/test/``
``tin_resize``  Imagenet_resize.tar.gz   ``<data_root>/odin/Imagenet_resize/Imagenet_resize/``
``lsun_crop``   LSUN.tar.gz              ``<data_root>/odin/LSUN/test/``
``lsun_resize`` LSUN_resize.tar.gz       ``<data_root>/odin/LSUN_resize/LSUN_resize/``
``isun``        iSUN.tar.gz              ``<data_root>/odin/iSUN/iSUN_patches/``
=============== ======================== ==============================================

An archive is downloaded (md5-checked, extracted safely) only when the request asks for it (``download``); an
archive already saved as ``<data_root>/odin/<archive>`` is then checked and extracted without a download.

TinyImageNet (crop) and (resize) are taken, in this order, from: 1. the released archive's folder above; 2. the
10,000 Tiny ImageNet test images ``<data_root>/tiny-imagenet-200/test/images/test_N.JPEG`` (64x64, as the paper
made them): (crop) a random 32x32 crop of each image, drawn from ``SeedSequence([seed, 4, i])`` with ``i`` the
file's position in sorted order (so ``num_images`` never changes an image's crop); (resize) the image downsampled
to 32x32 (Pillow's bilinear filter, antialiased); 3. the released archive, downloaded when ``download``.
Every image is then converted to the in-distribution spec (e.g. grayscale 28x28 for MNIST) and normalized with it.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from datamodules.download import DatasetNotFoundError, RemoteDataset, Resource
from datamodules.image_folder import load_image
from datamodules.ood import (OOD_LABEL, OODRequest, find_images, folder_dataset, non_empty_folder,
                             register_ood)
from odin_pl.images import ToSpec
from odin_pl.fingerprint import FileHashes
from odin_pl.spec import ImageSpec

ODIN_FOLDER = "odin"
TINY_IMAGENET_TEST_IMAGES = "tiny-imagenet-200/test/images"
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
PAPER_SIZE = 32  # the released sets' image size
_CROP_STREAM = 4  # SeedSequence stream of the crops (1, 2: noise; 3: photo crops in datamodules.ood)


def _archive(title: str, dropbox_key: str, filename: str, md5: str, images: str) -> RemoteDataset:
    urls = (f"https://www.dropbox.com/s/raw/{dropbox_key}/{filename}",
            f"https://www.dropbox.com/s/{dropbox_key}/{filename}?dl=1")
    return RemoteDataset(title, f"{ODIN_FOLDER}/{images}", non_empty_folder, (Resource(filename, md5, urls),),
                         download_to=ODIN_FOLDER)


#: The released archives by set name. URLs and md5s of TinyImageNet and LSUN as in pytorch-ood
#: (``pytorch_ood/dataset/img/odin.py``); iSUN's link is the one the ODIN / energy-OOD READMEs give, with the md5
#: that other loaders of the same file check (pytorch-ood 0.4 has no iSUN).
PAPER_ARCHIVES: dict[str, RemoteDataset] = {
    "tin_crop": _archive("TinyImageNet (crop)", "avgm2u562itwpkl", "Imagenet.tar.gz",
                         "7c0827e4246c3718a5ee076e999e52e5", "Imagenet/test"),
    "tin_resize": _archive("TinyImageNet (resize)", "kp3my3412u5k9rl", "Imagenet_resize.tar.gz",
                           "0f9ff11d45babf2eff5fe12281d1ac31", "Imagenet_resize/Imagenet_resize"),
    "lsun_crop": _archive("LSUN (crop)", "fhtsw1m3qxlwj6h", "LSUN.tar.gz", "458a0a0ab8e5f1cb4516d7400568e460",
                          "LSUN/test"),
    "lsun_resize": _archive("LSUN (resize)", "moqh2wh8696c3yl", "LSUN_resize.tar.gz",
                            "278b7b31c8cb7e804a1465a8ce03a2dc", "LSUN_resize/LSUN_resize"),
    "isun": _archive("iSUN", "ssz7qxfqae0cca5", "iSUN.tar.gz", "be77b0f2c26fda898afac5f99645ee70", "iSUN/iSUN_patches"),
}


class SeededCropDataset(Dataset):
    """A random ``size`` x ``size`` crop of each image file, then converted to the spec; yields ``(image, -1)``.

    ``items`` are ``(i, path)``: the crop is drawn from ``SeedSequence([seed, 4, i])``, so it depends on the seed
    and the image's index only.
    """

    def __init__(self, items: Sequence[tuple[int, Path]], spec: ImageSpec, seed: int = 0,
                 size: int = PAPER_SIZE) -> None:
        self.items, self.seed, self.size, self.to_spec = list(items), seed, size, ToSpec(spec)

    def __len__(self) -> int:
        return len(self.items)

    def fingerprint_facts(self, hashes: FileHashes) -> dict[str, Any]:
        """What fixes every image (``odin_pl.fingerprint``): the seed, crop size and each image's index and file
        SHA-256 (the crop box follows from them)."""
        return {"seed": self.seed, "size": self.size,
                "images": [[index, hashes.sha256(path)] for index, path in self.items]}

    def box(self, index: int, width: int, height: int) -> tuple[int, int, int, int]:
        """The crop (left, top, right, bottom) of the image ``index`` (an index of the full set)."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _CROP_STREAM, index]))
        left = int(rng.integers(0, max(width - self.size, 0) + 1))
        top = int(rng.integers(0, max(height - self.size, 0) + 1))
        return left, top, left + self.size, top + self.size

    def __getitem__(self, position: int) -> tuple[Tensor, int]:
        index, path = self.items[position]
        image = load_image(path)
        return self.to_spec(image.crop(self.box(index, *image.size))), OOD_LABEL


def downsample(image: Image.Image) -> Image.Image:
    """The image resized to the paper's 32x32 (bilinear, antialiased when shrinking)."""
    return image.resize((PAPER_SIZE, PAPER_SIZE), Image.BILINEAR)


def _released(name: str, req: OODRequest) -> Dataset:
    return folder_dataset(PAPER_ARCHIVES[name].ensure(req.data_root, req.download), req)


def _tiny_imagenet(name: str, req: OODRequest) -> Dataset:
    """The released folder, else the Tiny ImageNet test images (cropped or downsampled), else the download."""
    archive = PAPER_ARCHIVES[name]
    tiny = req.data_root / TINY_IMAGENET_TEST_IMAGES
    if not archive.is_complete(req.data_root / archive.folder) and non_empty_folder(tiny):
        if name == "tin_resize":
            return folder_dataset(tiny, req, downsample)
        return SeededCropDataset(req.pick(list(enumerate(find_images(tiny)))), req.spec, req.seed)
    try:
        return _released(name, req)
    except DatasetNotFoundError as err:
        raise DatasetNotFoundError(f"{err}\nAlternatively, put the 10,000 Tiny ImageNet test images (test_N.JPEG, "
                                   f"from {TINY_IMAGENET_URL}) in {tiny}: {name} is then made from them.") from err


for _name in PAPER_ARCHIVES:
    register_ood(_name)(partial(_tiny_imagenet if _name.startswith("tin_") else _released, _name))
