"""CIFAR-20 (for CIFAR-80 models) and the MNIST models' OOD sets: Omniglot, notMNIST, CIFAR-10bw.

=============  ========================================================================================
name           read from (under the data root)
=============  ========================================================================================
``cifar20``    ``cifar-100-python/`` (test pickle): the test images of the 20 classes left out of CIFAR-80
``cifar10bw``  ``cifar-10-batches-py/`` (test pickle), else ``cifar10-jpeg/test/<class>/*.jpg``
``omniglot``   ``omniglot-py/images_evaluation/<alphabet>/<character>/*.png`` (torchvision's layout)
``notmnist``   ``notMNIST_small/<A..J>/*.png`` (unreadable files, a few in the release, are skipped)
=============  ========================================================================================

Every image is converted to the in-distribution spec (size, channels) and normalized with it. CIFAR-10bw is
CIFAR-10 in grayscale (for an MNIST spec: 1x28x28; for an RGB spec the gray value fills the three channels).
Omniglot is inverted, as Hendrycks & Gimpel did, so that its black-on-white strokes are white on black like
MNIST's digits, then resized (105x105 to 28x28 for MNIST, antialiased). notMNIST is used as released (light
letters on a dark background). With ``download`` a missing set is fetched from the URLs below.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from torchvision import transforms as T

from datamodules.cifar import (CIFAR10, CIFAR100, cifar80_split, cifar100_test_images_of_classes, cifar_class_names,
                               load_cifar)
from datamodules.download import DatasetNotFoundError, RemoteDataset, Resource
from datamodules.ood import OODRequest, folder_dataset, image_array_dataset, non_empty_folder, register_ood
from odin_pl.images import ToSpec

CIFAR10_JPEG_TEST = "cifar10-jpeg/test"
NOTMNIST_LETTERS = "ABCDEFGHIJ"

#: torchvision's ``Omniglot(background=False)`` file: URL and md5 as in ``torchvision.datasets.Omniglot``.
OMNIGLOT = RemoteDataset(
    "Omniglot (evaluation images)", "omniglot-py/images_evaluation", non_empty_folder,
    (Resource("images_evaluation.zip", "6b91aef0f799c5bb55b94e3f2daec811",
              ("https://raw.githubusercontent.com/brendenlake/omniglot/master/python/images_evaluation.zip",)),),
    download_to="omniglot-py")

#: notMNIST_small has no published md5, so the download is not checksummed.
NOTMNIST = RemoteDataset(
    "notMNIST_small", "notMNIST_small", lambda folder: all((folder / c).is_dir() for c in NOTMNIST_LETTERS),
    (Resource("notMNIST_small.tar.gz", None, ("http://yaroslavvb.com/upload/notMNIST/notMNIST_small.tar.gz",)),))


def grayscale(image: Image.Image) -> Image.Image:
    return image.convert("L")


def inverted_grayscale(image: Image.Image) -> Image.Image:
    return ImageOps.invert(image.convert("L"))


def cifar20_classes(req: OODRequest) -> list[int]:
    """The 20 CIFAR-100 labels out of CIFAR-80: those missing from the spec's class names when the spec names 80
    CIFAR-100 classes (a CIFAR-80 model, whatever its split), else :func:`cifar80_split` with its default seed 0."""
    names = cifar_class_names(req.data_root, CIFAR100, req.download)
    in_names = set(req.spec.class_names)
    if len(in_names) == 80 and in_names <= set(names):
        return [label for label, name in enumerate(names) if name not in in_names]
    return cifar80_split()[1]


@register_ood("cifar20")
def _cifar20(req: OODRequest) -> Dataset:
    images = cifar100_test_images_of_classes(req.data_root, cifar20_classes(req), req.download)
    return image_array_dataset(np.asarray(req.pick(images)), ToSpec(req.spec))


@register_ood("cifar10bw")
def _cifar10bw(req: OODRequest) -> Dataset:
    """The test pickles when complete, else the class-folder copy, else the pickles' download (or the error)."""
    folder = req.data_root / CIFAR10_JPEG_TEST
    if not CIFAR10.source.is_complete(req.data_root / CIFAR10.source.folder) and folder.is_dir():
        return folder_dataset(folder, req, grayscale)
    try:
        images, _ = load_cifar(req.data_root, CIFAR10, train=False, download=req.download)
    except DatasetNotFoundError as err:
        raise DatasetNotFoundError(f"{err}\nAlternatively, put CIFAR-10's test images in class folders "
                                   f"{folder}/<class>/<image>.") from err
    return image_array_dataset(np.asarray(req.pick(images)), T.Compose([grayscale, ToSpec(req.spec)]))


@register_ood("omniglot")
def _omniglot(req: OODRequest) -> Dataset:
    return folder_dataset(OMNIGLOT.ensure(req.data_root, req.download), req, inverted_grayscale)


@register_ood("notmnist")
def _notmnist(req: OODRequest) -> Dataset:
    return folder_dataset(NOTMNIST.ensure(req.data_root, req.download), req)
