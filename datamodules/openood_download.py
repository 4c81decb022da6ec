"""OpenOOD's archives on Google Drive (``openood/evaluation_api/datasets.py`` and ``scripts/download/download.py``),
fetched with ``gdown`` and checked before use.

``benchmark_imglist.zip`` holds every list (``<data_root>/benchmark_imglist/<benchmark>/<list>.txt``); each image set
is one zip extracted into ``<data_root>/<images folder>/<set>/`` (``images_classic`` or ``images_largescale``, as in
OpenOOD's ``dir_dict``). What a download gives is checked: the file is a zip whose members pass their CRC, the
lists are there, and every image a list names exists; anything else fails with one line naming the archive and the
folder. ImageNet-1K's training images are not redistributed: they come from the official ILSVRC2012 release.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from datamodules.download import DatasetNotFoundError, extract_archive
from datamodules.openood import ListEntry, read_image_list
from odin_pl.errors import UserError

LISTS_FOLDER = "benchmark_imglist"


@dataclass(frozen=True)
class Archive:
    """One zip on Google Drive: its name, file id and whether its members lie under a top folder ``<name>/``
    (``benchmark_imglist.zip``) or not (the image zips, extracted into ``<images folder>/<name>/``)."""

    name: str
    drive_id: str
    nested: bool = False

    def describe(self) -> str:
        return f"{self.name}.zip (Google Drive id {self.drive_id})"


IMAGE_LISTS = Archive(LISTS_FOLDER, "1lI1j0_fDDvjIt9JlWAw09X8ks-yrR_H1", nested=True)
#: One archive per image set (the first folder of a list's paths), from OpenOOD's download table.
SET_ARCHIVES = {name: Archive(name, drive_id) for name, drive_id in {
    "cifar10": "1Co32RiiWe16lTaiOU6JMMnyUYS41IlO1",
    "cifar100": "1PGKheHUsf29leJPPGuXqzLBMwl8qMF8_",
    "tin": "1PZ-ixyx52U989IKsMA2OT-24fToTrelC",
    "mnist": "1CCHAGWqA1KJTFFswuF9cbhmB-j98Y1Sb",
    "svhn": "1DQfc11HOtB1nEwqS4pWUFp8vtQ3DczvI",
    "texture": "1OSz1m3hHfVWbRdmMwKbUzoU8Hg9UKcam",
    "places365": "1Ec-LRSTf6u5vEctKX9vRp9OA6tqnJ0Ay",
    "cifar10c": "170DU_ficWWmbh6O2wqELxK9jxRiGhlJH",
    "imagenet_1k": "1i1ipLDFARR-JZ9argXd2-0a6DXwVhXEj",
    "ssb_hard": "1PzkA-WGG8Z18h0ooL_pDdz9cO-DCIouE",
    "ninco": "1Z82cmvIB0eghTehxOGP5VTdLt7OD3nk6",
    "inaturalist": "1zfLfMvoUD0CUlKNnkk7LgxZZBnTBipdj",
    "openimage_o": "1VUFXnB_z70uHfdgJG2E_pjYOcEgqM7tE",
    "imagenet_v2": "1akg2IiE22HcbvTBpwXQoD7tgfPCdkoho",
    "imagenet_r": "1EzjMN2gq-bVV7lg-MEAdeuBuz-7jbGYU",
    "imagenet_c": "1JeXL9YH4BO8gCJ631c5BHbaSsl-lekHt",
    "imagenet_es": "1ATz11vKmPqyzfEaEDRaPTF9TXiC244sw",
}.items()}
IMAGENET_TRAIN = "imagenet_1k/train/"


def gdown_download(archive: Archive, output: Path, folder: Path) -> None:
    """Download ``archive`` to ``output`` with gdown; any failure is one line naming the archive and ``folder``,
    where it is to be extracted."""
    try:
        import gdown
    except ImportError:
        raise DatasetNotFoundError(f"downloading {archive.describe()} into {folder} needs the gdown package "
                                   "(pip install gdown)") from None
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        got = gdown.download(id=archive.drive_id, output=str(output), quiet=False)
    except (OSError, gdown.exceptions.DownloadError) as exc:
        reason = " ".join(str(exc).split())
        raise DatasetNotFoundError(f"could not download {archive.describe()} into {folder} ({reason}); download it "
                                   f"on a machine with internet access and extract it into {folder}") from exc
    if got is None or not output.is_file():
        raise DatasetNotFoundError(f"gdown gave no file for {archive.describe()}; download it by hand and extract "
                                   f"it into {folder}")


def fetch_archive(archive: Archive, parent: Path) -> None:
    """Download ``archive`` and extract it so that ``parent/<name>/`` holds its contents.

    A zip whose members all lie under ``<name>/`` is extracted into ``parent``, any other into ``parent/<name>/``
    (whatever :attr:`Archive.nested` says). The zip must open and pass its CRC check; it is removed after
    extraction.
    """
    folder = parent if archive.nested else parent / archive.name
    output = parent / f"{archive.name}.zip"
    gdown_download(archive, output, folder)
    try:
        try:
            with zipfile.ZipFile(output) as handle:
                names = handle.namelist()
                broken = handle.testzip()
        except zipfile.BadZipFile:
            raise DatasetNotFoundError(f"{output} from {archive.describe()} is not a zip file (Google Drive may "
                                       f"have sent a quota or sign-in page); download it by hand and extract it "
                                       f"into {folder}") from None
        if broken is not None or not names:
            raise DatasetNotFoundError(f"{output} from {archive.describe()} is damaged ({broken or 'no members'} "
                                       f"fails its check); download it again and extract it into {folder}")
        nested = all(name.startswith(f"{archive.name}/") for name in names)
        extract_archive(output, parent if nested else parent / archive.name)
    finally:
        output.unlink(missing_ok=True)


def require_list(data_root: Path, list_file: str, size: int | None, download: bool) -> list[ListEntry]:
    """The entries of ``benchmark_imglist/<list_file>``, downloading the lists' archive when the file is missing
    and ``download``; ``size``: the number of lines of OpenOOD v1.5's list (another count is an error)."""
    path = data_root / LISTS_FOLDER / list_file
    if not path.is_file() and download:
        fetch_archive(IMAGE_LISTS, data_root)
    if not path.is_file() and download:
        raise DatasetNotFoundError(f"{IMAGE_LISTS.describe()}, extracted into {data_root}, has no {path}: OpenOOD "
                                   "v1.5 has no such list")
    if not path.is_file():
        raise DatasetNotFoundError(f"OpenOOD image list {path} not found: download {IMAGE_LISTS.describe()} and "
                                   f"extract it into {data_root} (it holds {LISTS_FOLDER}/{list_file}), or pass "
                                   "download=True (evaluate.py: --openood.download true)")
    entries = read_image_list(path)
    if size is not None and len(entries) != size:
        raise UserError(f"{path} has {len(entries)} lines but OpenOOD v1.5's has {size}: another version of the "
                        f"lists; extract {IMAGE_LISTS.describe()} into {data_root} again")
    return entries


@dataclass(frozen=True)
class ImageRoot:
    """A set's images from another folder than ``<images folder>/<set>/``: ``folder`` holds the paths that follow
    the set's name in the list (``cifar10/test/cat/0001.png`` -> ``folder/test/cat/0001.png``); ``suffix`` (such as
    ``.jpg``, for a copy in another format) replaces each file's extension."""

    folder: Path
    suffix: str | None = None

    def locate(self, rest: str) -> Path:
        path = Path(self.folder).expanduser() / rest
        return path.with_suffix(self.suffix) if self.suffix else path


def _locate(images: Path, relpath: str, roots: Mapping[str, ImageRoot]) -> Path:
    name, _, rest = relpath.partition("/")
    return roots[name].locate(rest) if name in roots else images / relpath


def _missing_by_set(images: Path, entries: Sequence[ListEntry], roots: Mapping[str, ImageRoot]
                    ) -> dict[str, list[str]]:
    """The relpaths of the missing images, by image set (a path's first folder)."""
    missing: dict[str, list[str]] = {}
    for relpath, _ in entries:
        if not _locate(images, relpath, roots).is_file():
            missing.setdefault(relpath.split("/", 1)[0], []).append(relpath)
    return missing


def _archive_of(relpath: str) -> Archive | None:
    """The archive holding an image, None for ImageNet's training images (not redistributed by OpenOOD)."""
    return None if relpath.startswith(IMAGENET_TRAIN) else SET_ARCHIVES.get(relpath.split("/", 1)[0])


def require_images(images: Path, entries: Sequence[ListEntry], list_path: Path, download: bool,
                   roots: Mapping[str, ImageRoot] | None = None) -> list[Path]:
    """The paths of the images ``entries`` name under the images folder ``images`` (or, for the sets in ``roots``,
    under their own folder); the missing sets' archives are downloaded first when ``download`` (never into a set's
    own folder); still missing images are an error naming the archives and folders."""
    roots = roots or {}
    missing = _missing_by_set(images, entries, roots)
    if missing and download:
        for name, relpaths in missing.items():
            archive = _archive_of(relpaths[0])
            if archive is not None and name not in roots:
                fetch_archive(archive, images)
        missing = _missing_by_set(images, entries, roots)
    if missing:
        remedies = []
        for name, relpaths in missing.items():
            archive = _archive_of(relpaths[0])
            if name in roots:
                remedies.append(f"put {name!r}'s images in {roots[name].folder} (given for it)")
            elif relpaths[0].startswith(IMAGENET_TRAIN):
                remedies.append(f"put ILSVRC2012's training images (official release) in {images / IMAGENET_TRAIN}")
            elif archive is not None:
                remedies.append(f"download {archive.describe()} and extract it into {images / name}")
            else:
                remedies.append(f"put the images in {images / name} (OpenOOD has no archive of {name!r})")
        count, first = sum(len(r) for r in missing.values()), next(iter(missing.values()))[0]
        raise DatasetNotFoundError(f"{count} of {len(entries)} images listed in {list_path} are missing (first: "
                                   f"{_locate(images, first, roots)}): {'; '.join(remedies)}"
                                   + ("" if download else ", or pass download=True (evaluate.py: --openood.download "
                                                          "true)"))
    return [_locate(images, relpath, roots) for relpath, _ in entries]
