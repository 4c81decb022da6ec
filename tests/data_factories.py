"""Writers of tiny data sets in the real on-disk formats (CIFAR pickles, MNIST idx files), shared by the tests."""

from __future__ import annotations

import gzip
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))


def _cifar_batch(labels: list[int], rng: np.random.Generator, label_key: str) -> dict:
    """A CIFAR batch: [N, 3072] uint8 rows (R, G, B planes); the red pixel (0, 0) holds the label."""
    data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    data[:, 0] = labels
    return {"data": data, label_key: list(labels), "filenames": [f"{i}.png" for i in range(len(labels))]}


def write_cifar10(root: Path) -> None:
    """cifar-10-batches-py with 5 training batches of one image per class and a test batch of two per class."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    for i in range(1, 6):
        _pickle(folder / f"data_batch_{i}", _cifar_batch(list(range(10)), rng, "labels"))
    _pickle(folder / "test_batch", _cifar_batch(list(range(10)) * 2, rng, "labels"))
    _pickle(folder / "batches.meta", {"label_names": CIFAR10_NAMES, "num_vis": 3072})


def write_cifar100(root: Path) -> None:
    """cifar-100-python with two training images and one test image per fine label."""
    rng = np.random.default_rng(1)
    folder = root / "cifar-100-python"
    for name, labels in (("train", list(range(100)) * 2), ("test", list(range(100)))):
        batch = _cifar_batch(labels, rng, "fine_labels")
        batch["coarse_labels"] = [label // 5 for label in labels]
        _pickle(folder / name, batch)
    _pickle(folder / "meta", {"fine_label_names": [f"fine{i:02d}" for i in range(100)],
                              "coarse_label_names": [f"coarse{i:02d}" for i in range(20)]})


def write_cifar10_folder(root: Path, per_class: dict[str, int] | None = None, suffix: str = ".png") -> Path:
    """``root/cifar10-jpeg/{train,test}/<class>/NNNN<suffix>``: random 32x32 RGB images (``per_class`` per split,
    default 2 training and 1 test image per class), the layout of the shared JPEG copy; returns the folder."""
    from PIL import Image

    rng = np.random.default_rng(4)
    folder = root / "cifar10-jpeg"
    for split, count in (per_class or {"train": 2, "test": 1}).items():
        for name in reversed(CIFAR10_NAMES):
            (folder / split / name).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                    folder / split / name / f"{i:04d}{suffix}")
    return folder


def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` (cast to uint8) as an idx file."""
    return struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + \
        array.astype(np.uint8).tobytes()


def write_mnist(root: Path, gz: bool) -> dict[bool, tuple[np.ndarray, np.ndarray]]:
    """MNIST/raw idx files (gzipped or not) with 12 training and 6 test images."""
    rng = np.random.default_rng(2)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    data = {}
    for train, prefix, n in ((True, "train", 12), (False, "t10k", 6)):
        images, labels = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), rng.integers(0, 10, size=n)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                with gzip.open(raw / f"{name}.gz", "wb") as f:
                    f.write(idx_bytes(array))
            else:
                (raw / name).write_bytes(idx_bytes(array))
        data[train] = images, labels
    return data


def flip_a_tensor_bit(path: Path) -> None:
    """Flip one bit inside the first tensor's data of the torch zip archive ``path`` (its directory stays intact,
    so only the member's CRC-32 tells)."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if "/data/" in i.filename)
    data = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    data[info.header_offset + 30 + name_length + extra_length + 5] ^= 0x10
    path.write_bytes(bytes(data))
