"""Download, checksum and safe extraction shared by every data set, and the error a missing data set raises.

A data set is described by a :class:`RemoteDataset` (its folder under the data root, how to tell that it is
complete, and the files to download). :meth:`RemoteDataset.ensure` returns the folder when it is there, downloads
it when asked, and otherwise (or when the network is closed) raises :class:`DatasetNotFoundError`, whose message
says what to download, where to put it and how to set the data root.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torchvision.datasets.utils import calculate_md5

from datamodules.base import DATA_ROOT_ENV
from odin_pl.errors import MissingFileError, UserError

_CHUNK = 1 << 20


class DatasetNotFoundError(MissingFileError):
    """A data set is missing (or could not be downloaded); the message says what to download and where."""


class ChecksumError(UserError):
    """A file's md5 differs from the published one."""


class UnsafeArchiveError(UserError):
    """An archive member would be written outside the extraction folder."""


@dataclass(frozen=True)
class Resource:
    """One file to download: its name on disk, its md5 (None where none is published) and the URLs (mirrors)
    to try in order."""

    filename: str
    md5: str | None
    urls: tuple[str, ...]


def check_md5(path: str | os.PathLike, md5: str) -> None:
    """Raise :class:`ChecksumError` naming the file and both md5s when ``path``'s md5 (torchvision's
    ``calculate_md5``) is not ``md5`` (torchvision's ``check_integrity`` answers only yes or no)."""
    actual = calculate_md5(path)
    if actual != md5.lower():
        raise ChecksumError(f"checksum mismatch for {path}: md5 is {actual}, expected {md5.lower()}; the file is "
                            f"corrupt, truncated or a different version: delete it and download it again")


def download_url(url: str, dest: str | os.PathLike, md5: str | None = None, timeout: float = 60.0) -> Path:
    """Stream ``url`` to a temporary file next to ``dest``, check its md5, then rename it to ``dest``.

    Network errors propagate as ``urllib.error.URLError`` / ``OSError``; a wrong md5 raises :class:`ChecksumError`
    and leaves no file behind. Kept rather than torchvision's ``download_url``, which writes to ``dest`` itself
    (a failed or corrupt download stays there), retries an https URL over plain http, and ends in "File not found
    or corrupted" without the two md5s.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    request = urllib.request.Request(url, headers={"User-Agent": "odin-pl"})
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as response:
            shutil.copyfileobj(response, out, _CHUNK)
        if md5 is not None:
            actual = calculate_md5(tmp)
            if actual != md5.lower():
                raise ChecksumError(f"checksum mismatch for {dest} downloaded from {url}: md5 is {actual}, "
                                    f"expected {md5.lower()}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _inside(root: str, path: str) -> bool:
    return os.path.commonpath([root, path]) == root


def _check_member(archive: Path, root: str, name: str, link: str | None = None, hardlink: bool = False) -> None:
    """Refuse a member whose path, or whose link target, resolves outside ``root`` (on the current disk state)."""
    def refuse(why: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(f"refusing to extract {archive}: member {name!r} {why}, outside the destination "
                                  f"{root}; the archive is corrupt or malicious")

    if os.path.isabs(name) or Path(name).drive:
        raise refuse("has an absolute path")
    target = os.path.join(os.path.realpath(os.path.join(root, os.path.dirname(name))), os.path.basename(name))
    if not _inside(root, os.path.normpath(target)):
        raise refuse("would be written")
    if link is not None:
        if os.path.isabs(link):
            raise refuse(f"links to the absolute path {link!r}")
        base = root if hardlink else os.path.dirname(target)
        if not _inside(root, os.path.realpath(os.path.join(base, link))):
            raise refuse(f"links to {link!r}")


def extract_archive(path: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract a .tar.gz / .tgz / .tar / .zip archive into ``dest``, refusing members that would escape it.

    Absolute paths, ``..`` components, and symbolic or hard links pointing outside ``dest`` (also through links
    extracted earlier) raise :class:`UnsafeArchiveError`; so do device files and FIFOs. Members are checked and
    extracted in order, so the members before a refused one stay extracted (inside ``dest``). Kept rather than
    torchvision's ``extract_archive``, which calls ``tarfile.extractall`` without a filter: before Python 3.14 a
    member ``../x`` or a link out of ``dest`` is written outside it.
    """
    path, dest = Path(path), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = os.path.realpath(dest)
    name = path.name.lower()
    if name.endswith(".zip"):
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                _check_member(path, root, info.filename)
                archive.extract(info, root)
    elif name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(path) as archive:
            # Python's own "data" filter (where it exists) is a second line of defence behind _check_member.
            options = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            for member in archive:
                if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
                    raise UnsafeArchiveError(f"refusing to extract {path}: member {member.name!r} is a device "
                                             f"file or FIFO")
                link = member.linkname if (member.issym() or member.islnk()) else None
                _check_member(path, root, member.name, link, hardlink=member.islnk())
                archive.extract(member, root, **options)
    else:
        raise UserError(f"cannot extract {path}: supported archives are .tar.gz, .tgz, .tar and .zip")
    return dest


@dataclass(frozen=True)
class RemoteDataset:
    """Where a data set lives under the data root and how to download it.

    ``folder``: the data set's folder, relative to the data root. ``is_complete(folder_path)`` tells whether it
    is usable. ``resources`` are downloaded into ``download_to`` (relative to the data root) and, when ``extract``,
    extracted there (each archive must create ``folder``).
    """

    name: str
    folder: str
    is_complete: Callable[[Path], bool]
    resources: tuple[Resource, ...]
    download_to: str = ""
    extract: bool = True

    def not_found(self, data_root: Path, reason: str | None = None) -> DatasetNotFoundError:
        """The error for a missing data set: what to download, where to put it, how to set the data root."""
        folder, target = data_root / self.folder, data_root / self.download_to
        it = "them" if len(self.resources) > 1 else "it"
        action = f"extract {it} in" if self.extract else f"put {it} in"
        files = "\n".join(f"  {' or '.join(r.urls)}  ({f'md5 {r.md5}' if r.md5 else 'no published md5'})"
                          for r in self.resources)
        lines = [f"{self.name} not found: expected it in {folder}" + (f" ({reason})" if reason else "") + ".",
                 f"Download\n{files}",
                 f"and {action} {target}" + (f" so that {folder} exists" if self.extract else "")
                 + ", or pass download=True on a machine with internet access.",
                 f"The data root ({data_root}) is set with --data_root or the environment variable {DATA_ROOT_ENV} "
                 f"(default ./data)."]
        return DatasetNotFoundError("\n".join(lines))

    def ensure(self, data_root: Path, download: bool = False) -> Path:
        """The data set's folder; downloads it first when missing and ``download``, else raises."""
        folder = data_root / self.folder
        if self.is_complete(folder):
            return folder
        if not download:
            raise self.not_found(data_root)
        target = data_root / self.download_to
        for resource in self.resources:
            self._fetch(resource, target / resource.filename, data_root)
            if self.extract:
                extract_archive(target / resource.filename, target)
        if not self.is_complete(folder):
            raise self.not_found(data_root, reason="the downloaded files do not contain the expected layout")
        return folder

    def _fetch(self, resource: Resource, dest: Path, data_root: Path) -> None:
        if dest.exists():
            if resource.md5 is not None:
                check_md5(dest, resource.md5)
            return
        failures: list[str] = []
        last: OSError | None = None
        for url in resource.urls:
            try:
                download_url(url, dest, resource.md5)
                return
            except OSError as exc:  # URLError, HTTPError, timeouts and refused connections are all OSErrors
                failures.append(f"{url}: {exc}")
                last = exc
        raise self.not_found(data_root, reason="download failed: " + "; ".join(failures)) from last


def require_files(*names: str) -> Callable[[Path], bool]:
    """An ``is_complete`` check: every one of ``names`` is a file in the folder."""
    return lambda folder: all((folder / name).is_file() for name in names)
