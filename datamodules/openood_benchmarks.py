"""OpenOOD v1.5's four benchmarks as named suites (``openood/evaluation_api/datasets.py`` DATA_INFO), and the
suite of data sets one evaluation reads.

==============  ==========================  ========================  ===========================================
benchmark       ID train / val / test       OOD val                   near-OOD; far-OOD; csID
==============  ==========================  ========================  ===========================================
``cifar10``     50,000 / 1,000 / 9,000      val_tin (1,000)           cifar100, tin; mnist, svhn, texture,
                                                                      places365; cifar10c
``cifar100``    50,000 / 1,000 / 9,000      val_tin (972)             cifar10, tin; mnist, svhn, texture,
                                                                      places365; none
``imagenet200`` train / 1,000 / 9,000       val_openimage_o (1,763)   ssb_hard, ninco; inaturalist, textures,
                                                                      openimage_o; imagenet_v2, _c, _r
``imagenet``    train / 5,000 / 45,000      val_openimage_o (1,763)   as imagenet200; csID also imagenet_es
==============  ==========================  ========================  ===========================================

The ID val and test lists split the official test (CIFAR) or validation (ILSVRC2012) images; each list's line count
is checked against OpenOOD v1.5's where it is known. A data root in OpenOOD's layout has
``benchmark_imglist/<benchmark>/<list>.txt`` and the images under ``images_classic/`` and ``images_largescale/``.
Any folder of images can join a suite's near- or far-OOD group, or stand in for its OOD validation set where
OpenOOD's is not at hand (:meth:`OpenOODSuite.add_folder`; the results then say the search differs from OpenOOD's).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from torch.utils.data import Dataset

from datamodules.base import resolve_data_root
from datamodules.download import DatasetNotFoundError
from datamodules.ood import find_images
from datamodules.openood import OOD_LABEL, ImageListDataset, Preprocessing
from datamodules.openood_download import LISTS_FOLDER, ImageRoot, require_images, require_list
from odin_pl.errors import UserError
from odin_pl.protocol.openood import OpenOODSets
from odin_pl.spec import ImageSpec

CLASSIC, LARGESCALE = "images_classic", "images_largescale"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
OOD_GROUPS = ("near", "far")
OOD_VAL = "val"  # add_folder's group for a folder in place of the benchmark's OOD validation list


@dataclass(frozen=True)
class ListSet:
    """One list of a benchmark: the set's name in results, its file under ``benchmark_imglist/``, the images
    folder its paths are relative to, the line count of OpenOOD v1.5's list (None: not checked) and whether it is
    ImageNet-C (ToTensor + Normalize only)."""

    name: str
    list_file: str
    images: str
    size: int | None
    imagenet_c: bool = False


@dataclass(frozen=True)
class Benchmark:
    """An OpenOOD v1.5 benchmark: ID splits, the OOD validation set, the near/far-OOD groups and the csID sets."""

    name: str
    num_classes: int
    preprocessing: Preprocessing
    train: ListSet
    val: ListSet
    test: ListSet
    ood_val: ListSet
    near: tuple[ListSet, ...]
    far: tuple[ListSet, ...]
    csid: tuple[ListSet, ...] = ()

    @property
    def image_spec(self) -> ImageSpec:
        """The spec of OpenOOD's inputs for this benchmark (its crop size and normalization)."""
        return self.preprocessing.image_spec(f"openood_{self.name}")

    def group(self, name: str) -> tuple[ListSet, ...]:
        return {"near": self.near, "far": self.far, "csid": self.csid}[name]


def _cifar(name: str, other: str, sizes: Mapping[str, int], csid: tuple[ListSet, ...],
           preprocessing: Preprocessing) -> Benchmark:
    def entry(set_name: str, prefix: str = "test") -> ListSet:
        key = f"{prefix}_{set_name}"
        return ListSet(key if prefix == "val" else set_name, f"{name}/{key}.txt", CLASSIC, sizes[key])

    return Benchmark(name, 100 if name == "cifar100" else 10, preprocessing,
                     train=ListSet(f"{name}_train", f"{name}/train_{name}.txt", CLASSIC, 50_000),
                     val=ListSet(f"{name}_val", f"{name}/val_{name}.txt", CLASSIC, 1_000),
                     test=ListSet(f"{name}_test", f"{name}/test_{name}.txt", CLASSIC, 9_000),
                     ood_val=entry("tin", "val"), near=(entry(other), entry("tin")),
                     far=tuple(entry(s) for s in ("mnist", "svhn", "texture", "places365")), csid=csid)


def _imagenet(name: str, val: int, test: int, csid: Sequence[str]) -> Benchmark:
    def entry(set_name: str, images: str = LARGESCALE, size: int | None = None, prefix: str = "test") -> ListSet:
        key = f"{prefix}_{set_name}"
        return ListSet(key if prefix == "val" else set_name, f"{name}/{key}.txt", images, size)

    def shifted(set_name: str) -> ListSet:  # test_imagenet200_v2.txt / test_imagenet_v2.txt
        return ListSet(f"imagenet_{set_name}", f"{name}/test_{name}_{set_name}.txt", LARGESCALE, None,
                       imagenet_c=set_name == "c")

    return Benchmark(name, 200 if name == "imagenet200" else 1000,
                     Preprocessing(256, 224, IMAGENET_MEAN, IMAGENET_STD),
                     train=ListSet(f"{name}_train", f"{name}/train_{name}.txt", LARGESCALE, None),
                     val=ListSet(f"{name}_val", f"{name}/val_{name}.txt", LARGESCALE, val),
                     test=ListSet(f"{name}_test", f"{name}/test_{name}.txt", LARGESCALE, test),
                     ood_val=entry("openimage_o", size=1_763, prefix="val"),
                     near=(entry("ssb_hard", size=49_000), entry("ninco", size=5_879)),
                     far=(entry("inaturalist", size=10_000), entry("textures", CLASSIC, 5_160),
                          entry("openimage_o", size=15_869)),
                     csid=tuple(shifted(s) for s in csid))


_CIFAR10_SIZES = {"val_tin": 1_000, "test_cifar100": 9_000, "test_tin": 7_793, "test_mnist": 70_000,
                  "test_svhn": 26_032, "test_texture": 5_640, "test_places365": 35_195}
_CIFAR100_SIZES = {**_CIFAR10_SIZES, "val_tin": 972, "test_cifar10": 10_000, "test_tin": 6_526,
                   "test_places365": 33_773}
BENCHMARKS: dict[str, Benchmark] = {
    "cifar10": _cifar("cifar10", "cifar100", _CIFAR10_SIZES,
                      (ListSet("cifar10c", "cifar10/test_cifar10c.txt", CLASSIC, 10_000),),
                      Preprocessing(32, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))),
    "cifar100": _cifar("cifar100", "cifar10", _CIFAR100_SIZES, (),
                       Preprocessing(32, 32, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))),
    "imagenet200": _imagenet("imagenet200", 1_000, 9_000, ("v2", "c", "r")),
    "imagenet": _imagenet("imagenet", 5_000, 45_000, ("v2", "c", "r", "es")),
}


def get_benchmark(benchmark: str | Benchmark) -> Benchmark:
    if isinstance(benchmark, Benchmark):
        return benchmark
    if benchmark not in BENCHMARKS:
        raise UserError(f"unknown OpenOOD benchmark {benchmark!r}; use one of {', '.join(BENCHMARKS)}")
    return BENCHMARKS[benchmark]


@dataclass
class OpenOODSuite:
    """The data sets of one OpenOOD evaluation, each yielding ``(normalized image, label)`` in ``spec``.

    ``id``: the ID splits by name (``val``, ``test``; ``train`` when asked); ``ood_val``: the OOD validation set,
    named ``ood_val_name`` (the benchmark's list, or a folder standing in for it); ``near``, ``far``: OOD test
    sets (label -1) by name; ``csid``: covariate-shifted ID sets (class labels);
    ``sources``: each set's list file or folder; ``skipped``: test sets that are not here, with what to download.
    """

    benchmark: Benchmark
    spec: ImageSpec
    id: dict[str, Dataset] = field(default_factory=dict)
    ood_val: Dataset | None = None
    ood_val_name: str = ""
    near: dict[str, Dataset] = field(default_factory=dict)
    far: dict[str, Dataset] = field(default_factory=dict)
    csid: dict[str, Dataset] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def add_folder(self, group: str, name: str, folder: str | os.PathLike,
                   exclude: Sequence[str | os.PathLike] = ()) -> None:
        """Every decodable image under ``folder`` (any depth, sorted; nothing under ``exclude``) as the OOD set
        ``name`` of the ``near`` or ``far`` group, with the benchmark's preprocessing; it replaces a list's set
        of that name (and its skipped entry). Group ``val``: the set replaces the OOD validation set (its name must
        not be a test set's: the search would see test images)."""
        if group not in (*OOD_GROUPS, OOD_VAL):
            raise UserError(f"a folder joins the near or far group or replaces the OOD validation set (val), "
                            f"not {group!r}")
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise UserError(f"OOD folder {folder} (for {group}/{name}) does not exist")
        paths = find_images(folder, [Path(e).expanduser().resolve() for e in exclude])
        if not paths:
            raise UserError(f"no decodable images under {folder} (for {group}/{name})")
        taken = {"near": self.near, "far": self.far, OOD_VAL: {self.ood_val_name: self.ood_val}}
        for other in taken:
            if other != group and name in taken[other]:
                raise UserError(f"{name!r} is already a{'n' if other == OOD_VAL else ''} {other}-OOD set of this "
                                "suite: give the folder another name")
        dataset = ImageListDataset([(path, OOD_LABEL) for path in paths],
                                   self.benchmark.preprocessing.transform(self.spec), self.spec.size)
        if group == OOD_VAL:
            self.sources.pop(self.ood_val_name, None)
            self.ood_val, self.ood_val_name = dataset, name
        else:
            getattr(self, group)[name] = dataset
        self.sources[name] = str(folder)
        self.skipped.pop(name, None)

    def sets(self) -> OpenOODSets:
        """The protocol's view of the suite (``odin_pl.protocol.openood``)."""
        listed = {group: tuple(e.name for e in self.benchmark.group(group)) for group in OOD_GROUPS}
        return OpenOODSets(self.benchmark.name, self.id["val"], self.id["test"], self.ood_val_name,
                           self.ood_val, dict(self.near), dict(self.far), self.id.get("train"), dict(self.sources),
                           dict(self.skipped), {**listed, OOD_VAL: (self.benchmark.ood_val.name,)})


def _list_dataset(benchmark: Benchmark, entry: ListSet, data_root: Path, spec: ImageSpec, ood: bool,
                  download: bool, roots: Mapping[str, ImageRoot]) -> Dataset:
    """The images of one list, checked: labels -1 for OOD lists, class indices otherwise."""
    entries = require_list(data_root, entry.list_file, entry.size, download)
    list_path = data_root / LISTS_FOLDER / entry.list_file
    for number, (relpath, label) in enumerate(entries, start=1):
        wrong = label != OOD_LABEL if ood else not 0 <= label < benchmark.num_classes
        if wrong:
            want = f"{OOD_LABEL} (OOD)" if ood else f"a class index in [0, {benchmark.num_classes})"
            raise UserError(f"{list_path}, line {number}: label {label} for {relpath}, expected {want}")
    paths = require_images(data_root / entry.images, entries, list_path, download, roots)
    transform = benchmark.preprocessing.transform(spec, resize=not entry.imagenet_c)
    return ImageListDataset([(path, label) for path, (_, label) in zip(paths, entries)], transform, spec.size)


def build_openood_suite(benchmark: str | Benchmark, data_root: str | os.PathLike | None = None,
                        spec: ImageSpec | None = None, download: bool = False, train: bool = False,
                        csid: bool = True, folders: Mapping[str, str | os.PathLike] | None = None,
                        image_roots: Mapping[str, ImageRoot | str | os.PathLike] | None = None) -> OpenOODSuite:
    """The suite of ``benchmark`` under ``data_root`` (OpenOOD's layout), its images in ``spec`` (a model's spec:
    OpenOOD's crop size and RGB, normalized with the spec's mean/std; default: the benchmark's own).

    The ID val and test lists and the OOD val list must be there (and the ID train list with ``train``), else
    :class:`~datamodules.download.DatasetNotFoundError`; a missing near/far/csID set is skipped, with what to
    download. ``download`` fetches what is missing with gdown. ``folders`` maps ``"<near|far>/<name>"`` to a
    folder of images joining the suite, and ``"val/<name>"`` to one replacing the OOD validation list (which then
    need not be there) (:meth:`OpenOODSuite.add_folder`). ``image_roots`` reads a set's listed
    images from another folder (an :class:`~datamodules.openood_download.ImageRoot`, or a folder), such as
    ``{"cifar10": ImageRoot("cifar10-jpeg", ".jpg")}`` for a JPEG copy with the same file names.
    """
    bench = get_benchmark(benchmark)
    root = resolve_data_root(data_root)
    spec = spec or bench.image_spec
    suite = OpenOODSuite(bench, spec)
    roots = {name: given if isinstance(given, ImageRoot) else ImageRoot(Path(given))
             for name, given in (image_roots or {}).items()}

    def load(entry: ListSet, ood: bool) -> Dataset:
        dataset = _list_dataset(bench, entry, root, spec, ood, download, roots)
        suite.sources[entry.name] = str(root / LISTS_FOLDER / entry.list_file)
        return dataset

    splits = {"val": bench.val, "test": bench.test, **({"train": bench.train} if train else {})}
    suite.id = {split: load(entry, ood=False) for split, entry in splits.items()}
    folders = dict(folders or {})
    if not any(str(key).startswith(f"{OOD_VAL}/") for key in folders):
        suite.ood_val, suite.ood_val_name = load(bench.ood_val, ood=True), bench.ood_val.name
    for group in (*OOD_GROUPS, *(("csid",) if csid else ())):
        for entry in bench.group(group):
            try:
                getattr(suite, group)[entry.name] = load(entry, ood=group != "csid")
            except DatasetNotFoundError as err:
                suite.skipped[entry.name] = str(err)
    for key, folder in folders.items():
        group, _, name = str(key).partition("/")
        if not name:
            raise UserError(f"folder key {key!r}: write it as '<near|far|val>/<name>'")
        suite.add_folder(group, name, folder)
    return suite

