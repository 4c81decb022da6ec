"""Fingerprints (hex SHA-256) of exact contents: a file's bytes, a data set's images and labels.

A data set's fingerprint changes with any pixel, label, order or count, and with nothing else (not the transform,
which the weights and the image spec fix). :func:`dataset_sha256` reads what a data set holds:

* in-memory uint8 arrays: ``pixels`` (``SpecArrayDataset``) or ``images`` (``ArrayImageDataset``), with ``labels``;
* image files: ``samples``, a list of ``(path, label)`` (``ImageFolderDataset``): each file's bytes;
* ``torch.utils.data.TensorDataset``: its tensors (images and labels);
* ``torch.utils.data.Subset`` of any of these: the base set's fingerprint and the indices, in order.

Anything else is refused (a fingerprint that missed the images would let stale results pass).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset
from odin_pl.errors import UserError


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (the fingerprint of a checkpoint, weights or fit file)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _update_array(digest: Any, array: np.ndarray | torch.Tensor) -> None:
    """Feed dtype, shape and the bytes in C order (a view's logical order, not its memory layout)."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().contiguous().numpy()
    array = np.ascontiguousarray(array)
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(memoryview(array).cast("B"))


def dataset_sha256(dataset: Dataset) -> str:
    """Hex SHA-256 of the images and labels of ``dataset``, in index order (see the module's list of the kinds of
    data set it reads); a ValueError for a data set it cannot read."""
    digest = hashlib.sha256()
    if isinstance(dataset, Subset):
        digest.update(f"subset:{dataset_sha256(dataset.dataset)}".encode())
        _update_array(digest, np.asarray(dataset.indices, dtype=np.int64))
    elif isinstance(dataset, TensorDataset):
        digest.update(b"tensors")
        for tensor in dataset.tensors:
            _update_array(digest, tensor)
    elif hasattr(dataset, "labels") and (hasattr(dataset, "pixels") or hasattr(dataset, "images")):
        images = dataset.pixels if hasattr(dataset, "pixels") else dataset.images
        if images.dtype not in (np.uint8, torch.uint8):
            raise UserError(f"cannot fingerprint {type(dataset).__name__}: its images are {images.dtype}, "
                            "expected uint8 arrays")
        digest.update(b"arrays")
        _update_array(digest, images)
        _update_array(digest, np.asarray(dataset.labels, dtype=np.int64))
    elif hasattr(dataset, "samples"):
        digest.update(b"files")
        for path, label in dataset.samples:
            digest.update(f"{file_sha256(path)}:{int(label)};".encode())
    else:
        raise UserError(f"cannot fingerprint a data set of type {type(dataset).__name__}: odin_pl.fingerprint reads "
                        "in-memory uint8 arrays (`pixels` or `images` with `labels`), image files (`samples`), "
                        "TensorDataset and Subset; give the data set one of these forms")
    return digest.hexdigest()
