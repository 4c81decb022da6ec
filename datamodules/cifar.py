"""CIFAR-10, CIFAR-100 and CIFAR-80 (80 CIFAR-100 classes in-distribution; the other 20 are the OOD set CIFAR-20).

The data are read from torchvision's pickle layout under the data root (``cifar-10-batches-py/``,
``cifar-100-python/``); CIFAR-10 can also be read from a class-folder copy (``image_folder``). Training images
are augmented with a random 32x32 crop of the 4-pixel zero-padded image and a horizontal flip; all images are
normalized with the published per-channel training statistics of CIFAR-10 or CIFAR-100.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
from torch.utils.data import Dataset

from datamodules.base import ImageDataModule, seeded_permutation
from datamodules.download import RemoteDataset, Resource, require_files
from datamodules.image_folder import ImageFolderSplits, SpecArrayDataset, decode_images
from odin_pl.spec import ImageSpec
from odin_pl.errors import UserError

# Per-channel mean / std of the 50,000 training images' [0, 1] pixels (the values used throughout the literature).
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)

#: The paper's OOD suite for CIFAR in-distribution sets (names of ``datamodules.ood``).
CIFAR_OOD_SETS = ("tin_crop", "tin_resize", "lsun_crop", "lsun_resize", "isun", "gaussian", "uniform")


@dataclass(frozen=True)
class CIFARFormat:
    """A CIFAR pickle layout: where its files are, which keys hold labels and class names."""

    source: RemoteDataset
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str


def _format(name: str, folder: str, archive: str, md5: str, train: tuple[str, ...], test: tuple[str, ...],
            meta: str, label_key: str, names_key: str) -> CIFARFormat:
    url = f"https://www.cs.toronto.edu/~kriz/{archive}"
    source = RemoteDataset(name, folder, require_files(*train, *test, meta), (Resource(archive, md5, (url,)),))
    return CIFARFormat(source, train, test, meta, label_key, names_key)


# URLs and md5s as in torchvision.datasets.CIFAR10 / CIFAR100.
CIFAR10 = _format("CIFAR-10", "cifar-10-batches-py", "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                  tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta", "labels",
                  "label_names")
CIFAR100 = _format("CIFAR-100", "cifar-100-python", "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
                   ("train",), ("test",), "meta", "fine_labels", "fine_label_names")


def _unpickle(path: Path) -> dict:
    # The CIFAR release is pickled, as torchvision reads it: load only files you trust (download checks md5s).
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def load_cifar(data_root: str | Path, fmt: CIFARFormat, train: bool, download: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, 32, 32, 3] and int64 labels of the training or test pickles, in file order: the arrays
    of torchvision's ``CIFAR10``/``CIFAR100`` (``.data``, ``.targets``). Kept rather than those classes, which
    refuse any batch whose md5 is not the official release's (a re-pickled or generated copy) before reading it."""
    folder = fmt.source.ensure(Path(data_root), download)
    images, labels = [], []
    for name in fmt.train_files if train else fmt.test_files:
        entry = _unpickle(folder / name)
        data = np.asarray(entry["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(entry[fmt.label_key]) != len(data):
            raise UserError(f"{folder / name} is not a CIFAR batch: data of shape {data.shape} with "
                            f"{len(entry[fmt.label_key])} labels (expected [N, 3072] and N labels)")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(entry[fmt.label_key], dtype=np.int64))
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def cifar_class_names(data_root: str | Path, fmt: CIFARFormat, download: bool = False) -> tuple[str, ...]:
    """Class names from the meta file, in label order."""
    folder = fmt.source.ensure(Path(data_root), download)
    return tuple(_unpickle(folder / fmt.meta_file)[fmt.names_key])


def cifar80_split(seed: int = 0) -> tuple[list[int], list[int]]:
    """The CIFAR-80 / CIFAR-20 split of the 100 CIFAR-100 fine labels: (80 in-classes, 20 out-classes), sorted.

    The out-classes are the first 20 entries of ``torch.randperm(100)`` drawn from a generator seeded with
    ``seed`` (:func:`datamodules.base.seeded_permutation`). Seed 0 (the default) leaves out
    [19, 37, 40, 42, 44, 53, 56, 63, 69, 71, 74, 76, 80, 81, 82, 85, 90, 91, 93, 95] = cattle, house, lamp,
    leopard, lizard, orange, palm_tree, porcupine, rocket, sea, shrew, skyscraper, squirrel, streetcar, sunflower,
    tank, train, trout, turtle, whale.
    Here, not in a library: CIFAR-80 is the ODIN paper's split, which torchvision and others do not define.
    """
    order = seeded_permutation(100, seed).tolist()
    return sorted(order[20:]), sorted(order[:20])


def cifar100_test_images_of_classes(data_root: str | Path, classes: Sequence[int], download: bool = False
                                    ) -> np.ndarray:
    """uint8 CIFAR-100 test images [N, 32, 32, 3] whose fine label is in ``classes`` (file order): CIFAR-20."""
    images, labels = load_cifar(data_root, CIFAR100, train=False, download=download)
    return images[np.isin(labels, list(classes))]


class _CIFARDataModule(ImageDataModule):
    """CIFAR pickles in memory; subclasses set the format, statistics and data set name.

    ``download=True`` fetches the official archive (md5-checked) into the data root when it is missing.
    """

    fmt: ClassVar[CIFARFormat]
    mean: ClassVar[tuple[float, ...]]
    std: ClassVar[tuple[float, ...]]
    dataset: ClassVar[str]
    default_ood_sets = CIFAR_OOD_SETS

    def __init__(self, data_root: str | None = None, download: bool = False, batch_size: int = 128,
                 eval_batch_size: int | None = None, num_workers: int = 0, val_split: float = 0.0,
                 seed: int = 0) -> None:
        super().__init__(data_root=data_root, batch_size=batch_size, eval_batch_size=eval_batch_size,
                         num_workers=num_workers, val_split=val_split, seed=seed)
        self.save_hyperparameters()  # collects the arguments of the subclass's __init__ too
        self.download = download
        self._arrays: dict[bool, tuple[np.ndarray, np.ndarray]] = {}
        self._spec: ImageSpec | None = None

    def prepare_data(self) -> None:
        """Download the archive when ``download`` and the data are missing (Lightning runs this on one process)."""
        if self.download:
            self.fmt.source.ensure(self.data_root, download=True)

    def class_names(self) -> tuple[str, ...]:
        return cifar_class_names(self.data_root, self.fmt, self.download)

    def select(self, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The images and labels this data set uses out of a whole split (all of them here)."""
        return images, labels

    def arrays(self, train: bool) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images [N, 32, 32, 3] and labels of the split (loaded once)."""
        if train not in self._arrays:
            self._arrays[train] = self.select(*load_cifar(self.data_root, self.fmt, train, self.download))
        return self._arrays[train]

    @property
    def image_spec(self) -> ImageSpec:
        if self._spec is None:
            self._spec = ImageSpec(size=32, channels=3, mean=self.mean, std=self.std,
                                   class_names=self.class_names(), dataset=self.dataset)
        return self._spec

    def load_split(self, train: bool, augment: bool) -> Dataset:
        return SpecArrayDataset(*self.arrays(train), self.image_spec, augment)


class CIFAR10DataModule(_CIFARDataModule):
    """CIFAR-10 from ``<data_root>/cifar-10-batches-py`` or, with ``image_folder``, from a class-folder copy.

    ``image_folder`` (relative to ``data_root``, or absolute) holds ``train/<class>/*`` and ``test/<class>/*``
    with the 10 class folders named so that their sorted order is the official label order, e.g. the JPEG copy
    ``../shared/datasets/cifar10-jpeg``; each file is decoded once into memory, as the pickles are. Either way the
    spec, statistics and OOD suite are CIFAR-10's.
    """

    fmt, mean, std, dataset = CIFAR10, CIFAR10_MEAN, CIFAR10_STD, "cifar10"

    def __init__(self, data_root: str | None = None, image_folder: str | None = None, download: bool = False,
                 batch_size: int = 128, eval_batch_size: int | None = None, num_workers: int = 0,
                 val_split: float = 0.0, seed: int = 0) -> None:
        super().__init__(data_root=data_root, download=download, batch_size=batch_size,
                         eval_batch_size=eval_batch_size, num_workers=num_workers, val_split=val_split, seed=seed)
        self.folder: ImageFolderSplits | None = None
        if image_folder is not None:
            folder = self.data_root / Path(image_folder).expanduser()
            self.folder = ImageFolderSplits(folder / "train", folder / "test")

    def prepare_data(self) -> None:
        if self.folder is None:
            super().prepare_data()

    def class_names(self) -> tuple[str, ...]:
        if self.folder is None:
            return super().class_names()
        names = self.folder.class_names
        if len(names) != 10:
            raise UserError(f"{self.folder.folders[True]} has {len(names)} class folders {list(names)}; "
                            f"CIFAR-10 needs its 10 classes")
        return names

    def arrays(self, train: bool) -> tuple[np.ndarray, np.ndarray]:
        if self.folder is None:
            return super().arrays(train)
        if train not in self._arrays:
            spec = self.image_spec  # checks the 10 class folders first
            samples = self.folder.samples(train)
            labels = np.array([label for _, label in samples], dtype=np.int64)
            # Decoded once into memory, not torchvision's ImageFolder, which decodes every file at every epoch.
            self._arrays[train] = decode_images([path for path, _ in samples], spec), labels
        return self._arrays[train]


class CIFAR100DataModule(_CIFARDataModule):
    """CIFAR-100 (100 fine labels) from ``<data_root>/cifar-100-python``."""

    fmt, mean, std, dataset = CIFAR100, CIFAR100_MEAN, CIFAR100_STD, "cifar100"


class CIFAR80DataModule(_CIFARDataModule):
    """CIFAR-100 restricted to 80 classes, labels remapped to 0..79 in sorted class order.

    The classes are ``in_classes`` when given, else :func:`cifar80_split` (``split_seed``); the resolved list is
    written to the hyperparameters, so a checkpoint rebuilds exactly the same data. The 20 other classes' test
    images (:func:`cifar100_test_images_of_classes` with :attr:`out_classes`) are the OOD set ``cifar20``.
    Normalized with CIFAR-100's statistics.
    """

    fmt, mean, std, dataset = CIFAR100, CIFAR100_MEAN, CIFAR100_STD, "cifar80"
    default_ood_sets = CIFAR_OOD_SETS + ("cifar20",)

    def __init__(self, data_root: str | None = None, split_seed: int = 0, in_classes: Sequence[int] | None = None,
                 download: bool = False, batch_size: int = 128, eval_batch_size: int | None = None,
                 num_workers: int = 0, val_split: float = 0.0, seed: int = 0) -> None:
        super().__init__(data_root=data_root, download=download, batch_size=batch_size,
                         eval_batch_size=eval_batch_size, num_workers=num_workers, val_split=val_split, seed=seed)
        classes = cifar80_split(split_seed)[0] if in_classes is None else sorted(int(c) for c in in_classes)
        if len(set(classes)) != 80 or not all(0 <= c < 100 for c in classes):
            raise UserError(f"in_classes must be 80 distinct CIFAR-100 labels in 0..99, got {classes}")
        self.in_classes = classes
        self.out_classes = sorted(set(range(100)) - set(classes))
        self.hparams["in_classes"] = list(classes)

    def class_names(self) -> tuple[str, ...]:
        names = super().class_names()
        return tuple(names[c] for c in self.in_classes)

    def select(self, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        new_label = np.full(100, -1, dtype=np.int64)
        new_label[self.in_classes] = np.arange(len(self.in_classes))
        keep = np.isin(labels, self.in_classes)
        return images[keep], new_label[labels[keep]]
