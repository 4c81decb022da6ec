"""MNIST in torchvision's layout (``<data_root>/MNIST/raw/*-idx?-ubyte``, gzipped or not).

Pixels are in [0, 1] with no mean/std normalization and no augmentation: the Hendrycks & Gimpel recipe that the
paper reuses for its MNIST classifier.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from datamodules.base import ImageDataModule
from datamodules.download import RemoteDataset, Resource
from odin_pl.spec import ImageSpec
from odin_pl.errors import UserError

# Mirrors and md5s of the gzipped files as in torchvision.datasets.MNIST.
MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
_FILES = {  # (train, images?) -> file name, md5 of its .gz
    (True, True): ("train-images-idx3-ubyte", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    (True, False): ("train-labels-idx1-ubyte", "d53e105ee54ea40749a09fcbcd1e9432"),
    (False, True): ("t10k-images-idx3-ubyte", "9fb629c4189551a2d022fa330f9573f3"),
    (False, False): ("t10k-labels-idx1-ubyte", "ec29112dd5afa0611ce80d1b7f02629c"),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _find(folder: Path, name: str) -> Path | None:
    """``folder/name``, else ``folder/name.gz``, else None."""
    return next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)


MNIST_SOURCE = RemoteDataset(
    "MNIST", "MNIST/raw", lambda folder: all(_find(folder, name) for name, _ in _FILES.values()),
    tuple(Resource(f"{name}.gz", md5, tuple(m + f"{name}.gz" for m in MNIST_MIRRORS)) for name, md5 in _FILES.values()),
    download_to="MNIST/raw", extract=False)


def read_idx(path: str | Path) -> np.ndarray:
    """An idx file (LeCun's format; ``.gz`` read transparently) as a numpy array of its shape and type.

    Kept rather than torchvision's reader, which reads only unpacked files (its MNIST unpacks the .gz files when
    it downloads them; a read-only gzipped copy cannot be used) and fails a truncated file with a bare assertion.
    """
    path = Path(path)
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_DTYPES:
        raise UserError(f"{path} is not an idx file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    body = data[4 + 4 * ndim:]
    if len(body) != int(np.prod(shape)) * dtype.itemsize:
        raise UserError(f"{path} is truncated or corrupt: header says shape {shape} of {dtype}, "
                        f"but {len(body)} bytes follow")
    return np.frombuffer(body, dtype=dtype).reshape(shape)


def load_mnist(data_root: str | Path, train: bool, download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, 28, 28] and int64 labels of the training or test set."""
    folder = MNIST_SOURCE.ensure(Path(data_root), download)
    images = read_idx(_find(folder, _FILES[train, True][0]))
    labels = read_idx(_find(folder, _FILES[train, False][0])).astype(np.int64)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f"MNIST files in {folder} disagree: images of shape {images.shape}, labels of shape "
                        f"{labels.shape}")
    return images, labels


class MNISTImages(Dataset):
    """uint8 images [N, 28, 28] and labels in memory, yielding ``(image / 255 as float32 [1, 28, 28], label)``:
    the values of torchvision's ``MNIST`` with ``ToTensor()`` (the spec's mean 0 and std 1 leave them as they are),
    by one tensor operation instead of a PIL image per sample. Nothing is augmented, so nothing is random:
    ``draws_random_numbers`` tells the training loader to skip per-sample seeding."""

    draws_random_numbers = False

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images = np.array(images, dtype=np.uint8)  # a writable copy (the file's buffer is read-only)
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return torch.from_numpy(self.images[index]).unsqueeze(0).float().div_(255), int(self.labels[index])


class MNISTDataModule(ImageDataModule):
    """MNIST, 28x28 grayscale, pixels in [0, 1] (spec mean 0, std 1), no augmentation.

    ``download=True`` fetches the four official gzipped files (md5-checked) into ``<data_root>/MNIST/raw``.
    """

    default_ood_sets = ("omniglot", "notmnist", "cifar10bw", "gaussian", "uniform")

    def __init__(self, data_root: str | None = None, download: bool = False, batch_size: int = 128,
                 eval_batch_size: int | None = None, num_workers: int = 0, val_split: float = 0.0,
                 seed: int = 0) -> None:
        super().__init__(data_root=data_root, batch_size=batch_size, eval_batch_size=eval_batch_size,
                         num_workers=num_workers, val_split=val_split, seed=seed)
        self.save_hyperparameters()
        self.download = download
        self._spec = ImageSpec(size=28, channels=1, mean=(0.0,), std=(1.0,),
                               class_names=tuple(str(d) for d in range(10)), dataset="mnist")

    @property
    def image_spec(self) -> ImageSpec:
        return self._spec

    def prepare_data(self) -> None:
        """Download the files when ``download`` and they are missing (Lightning runs this on one process)."""
        if self.download:
            MNIST_SOURCE.ensure(self.data_root, download=True)

    def load_split(self, train: bool, augment: bool) -> Dataset:
        """The split, never augmented (the recipe uses none)."""
        return MNISTImages(*load_mnist(self.data_root, train, self.download))
