"""Fingerprints (hex SHA-256) of exact contents: a file's bytes, a data set's images and labels.

A data set's fingerprint changes with any pixel, label, order or count, and with nothing else (not the transform,
which the weights and the image spec fix). :func:`dataset_sha256` reads what a data set holds:

* in-memory uint8 arrays: ``pixels`` (``SpecArrayDataset``) or ``images`` (``ArrayImageDataset``), with ``labels``;
* image files: ``samples``, a list of ``(path, label)`` (``ImageFolderDataset``): each file's bytes;
* ``torch.utils.data.TensorDataset``: its tensors (images and labels);
* ``torch.utils.data.Subset`` of any of these: the base set's fingerprint and the indices, in order;
* generated sets (synthetic noise, seeded crops) that describe themselves with ``fingerprint_facts(hashes)``: JSON
  values that fix every image (generator, seed, count, shapes, crop boxes, the SHA-256 of the files they read).

Anything else is refused (a fingerprint that missed the images would let stale results pass). Files are hashed
through a :class:`FileHashes`, which remembers each file's SHA-256 by its ``os.stat`` facts, so that an unchanged
folder is not read again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from odin_pl.errors import UserError
from odin_pl.files import atomic_write

HASHES_FORMAT = "odin_pl.file_hashes"
#: A file whose ctime is less than this before it is hashed is not remembered: a change within the same tick of
#: the file system's clock would not change its ctime ("racily clean", as git calls it).
RACY_SECONDS = 2.0


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (the fingerprint of a checkpoint, weights or fit file)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


class FileHashes:
    """The SHA-256 of files' bytes, remembered (in the JSON file ``path``, when given) with the facts of the file's
    ``os.stat``: size, ``mtime_ns``, ``ctime_ns``, inode and device. A file whose facts are all unchanged is not
    read again; any write to a file, and setting its mtime back, change its ctime, and a file replaced by another
    has another inode, so that such a file is hashed again. A file changed less than :data:`RACY_SECONDS` before it
    is hashed is not remembered. An unreadable cache file is ignored (every file is then hashed)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._known: dict[str, list] = self._read()
        self._changed = False

    def _read(self) -> dict[str, list]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            content = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        files = content.get("files") if isinstance(content, dict) and content.get("format") == HASHES_FORMAT else None
        return files if isinstance(files, dict) else {}

    def sha256(self, path: str | Path) -> str:
        """Hex SHA-256 of the file's bytes (:func:`file_sha256`), read only when its stat facts are new. The facts
        are taken before the bytes are read, so that a file changed meanwhile is hashed again next time."""
        key = os.path.abspath(path)
        now = time.time_ns()
        stat = os.stat(key)
        facts = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev]
        known = self._known.get(key)
        if isinstance(known, list) and known[:-1] == facts and isinstance(known[-1], str):
            return known[-1]
        digest = file_sha256(key)
        if stat.st_ctime_ns <= now - int(RACY_SECONDS * 1e9):
            self._known[key] = [*facts, digest]
            self._changed = True
        return digest

    def save(self) -> None:
        """Write what was hashed to ``path`` (atomically), when anything new was."""
        if self.path is not None and self._changed:
            with atomic_write(self.path) as handle:
                json.dump({"format": HASHES_FORMAT, "files": self._known}, handle)
            self._changed = False


def _update_array(digest: Any, array: np.ndarray | torch.Tensor) -> None:
    """Feed dtype, shape and the bytes in C order (a view's logical order, not its memory layout)."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().contiguous().numpy()
    array = np.ascontiguousarray(array)
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(memoryview(array).cast("B"))


def array_sha256(array: np.ndarray | torch.Tensor) -> str:
    """Hex SHA-256 of an array's dtype, shape and bytes in C order."""
    digest = hashlib.sha256()
    _update_array(digest, array)
    return digest.hexdigest()


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """Hex SHA-256 of named tensors: each name (in sorted order) with its tensor's dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(f"{name};".encode())
        _update_array(digest, tensors[name])
    return digest.hexdigest()


def dataset_sha256(dataset: Dataset, hashes: FileHashes | None = None) -> str:
    """Hex SHA-256 of the images and labels of ``dataset``, in index order (see the module's list of the kinds of
    data set it reads); files are hashed through ``hashes`` (default: a new one, kept nowhere). A ValueError for a
    data set it cannot read."""
    hashes = hashes if hashes is not None else FileHashes()
    digest = hashlib.sha256()
    if isinstance(dataset, Subset):
        digest.update(f"subset:{dataset_sha256(dataset.dataset, hashes)}".encode())
        _update_array(digest, np.asarray(dataset.indices, dtype=np.int64))
    elif callable(getattr(dataset, "fingerprint_facts", None)):
        facts = dataset.fingerprint_facts(hashes)
        digest.update(f"generated:{type(dataset).__name__}:{json.dumps(facts, sort_keys=True)}".encode())
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
            digest.update(f"{hashes.sha256(path)}:{int(label)};".encode())
    else:
        raise UserError(f"cannot fingerprint a data set of type {type(dataset).__name__}: odin_pl.fingerprint reads "
                        "in-memory uint8 arrays (`pixels` or `images` with `labels`), image files (`samples`), "
                        "TensorDataset, Subset and generated sets (`fingerprint_facts`); give the data set one of "
                        "these forms")
    return digest.hexdigest()
