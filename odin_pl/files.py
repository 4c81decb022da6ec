"""Files that are never seen half-written (a temporary file beside the target, flushed, then renamed over it), and
the one check of every output file name made from a name (a method, a set, an analysis)."""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

import torch

from odin_pl.errors import OutputError, UserError

#: errno values a user fixes (free space, permissions, a read-only mount), reported as an OutputError.
_USER_FIXABLE = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                 errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                 errno.EROFS: "the file system is read-only"}

#: The longest file name (bytes) of common file systems; the temporary file beside a target adds a few.
MAX_FILE_NAME_BYTES = 240


def named_file(folder: str | Path, name: str) -> Path:
    """``folder / name`` for an output file whose ``name`` was made from a method, set or analysis name: a
    UserError unless ``name`` is one plain path component (not empty, ``.`` or ``..``, no separator or NUL) of at
    most :data:`MAX_FILE_NAME_BYTES` bytes, so that no name can write outside ``folder`` or fail after the work."""
    separators = {os.sep, *([os.altsep] if os.altsep else []), "\0"}
    if name in ("", ".", "..") or any(sep in name for sep in separators):
        raise UserError(f"the output file name {name!r} (made from a method, set or analysis name) is not a plain "
                        "file name; rename the method, set or folder it comes from")
    if len(os.fsencode(name)) > MAX_FILE_NAME_BYTES:
        raise UserError(f"the output file name {name[:40]!r}... has {len(os.fsencode(name))} bytes, more than "
                        f"{MAX_FILE_NAME_BYTES}; give the method, set or folder it comes from a shorter name")
    return Path(folder) / name


def replace_atomically(staging: str | Path, path: str | Path) -> None:
    """Put the complete file ``staging`` in place of ``path``: flush it to disk, rename it (atomic within one
    filesystem: ``staging`` must lie beside ``path``), then flush the folder, so that a crash at any moment leaves
    either the old or the new file at ``path``."""
    with open(staging, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(staging, path)
    folder = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", **open_args) -> Iterator[IO]:
    """Open a hidden temporary file beside ``path`` for writing (text in UTF-8); when the block ends, put it in
    place with :func:`replace_atomically`. If anything fails the temporary file is removed and ``path`` keeps its
    old content; a full disk or missing permission becomes an :class:`~odin_pl.errors.OutputError` that names
    the file."""
    path = Path(path)
    if "b" not in mode:
        open_args.setdefault("encoding", "utf-8")  # whatever the locale
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, mode, **open_args) as handle:
            yield handle
        replace_atomically(temporary, path)
    except BaseException as err:
        temporary.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in _USER_FIXABLE and not isinstance(err, OutputError):
            raise OutputError(f"cannot write {path}: {_USER_FIXABLE[err.errno]} ({err.strerror}); free space or "
                              f"choose another output folder (--output.dir), then run again with --output.resume "
                              f"true to keep what was already computed") from err
        raise


def save_atomically(obj: Any, path: Path) -> None:
    """``torch.save(obj, path)`` through :func:`~odin_pl.files.atomic_write`: never a half-written file. Saved
    through a file handle, the bytes depend on ``obj`` alone (a path would name the archive inside after the
    temporary file), so that equal contents have equal SHA-256."""
    with atomic_write(path, "wb") as handle:
        torch.save(obj, handle)
