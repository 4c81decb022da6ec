"""Reading the files torch saves (checkpoints, weights): every zip member's CRC-32 checked, pickles refused.

``torch.load`` does not check the checksums its zip format stores, so a bit flip in a tensor goes unnoticed
and changes the results a little: :func:`check_archive` reads the whole file once and compares every member's
CRC-32 with the one recorded (a file in the legacy, pre-1.6 format has none to check). :func:`load_torch_file`
is the one way odin-pl reads such a file a user gives: checked, then ``weights_only=True`` (tensors and plain
data; a pickled Python object is refused, naming ``--trust_pickle``) unless the user trusts its source.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch

from odin_pl.errors import TRUST_FLAG, UserError

def check_archive(path: str | Path, what: str = "checkpoint") -> None:
    """Raise a :class:`UserError` naming ``path`` when it is a zip archive whose members do not match their
    CRC-32 (or whose directory is broken); ``what`` names the kind of file in the message."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as err:
        damaged = f"? ({err})"
    if damaged is not None:
        raise UserError(f"{what} {path} is damaged: its member {damaged} does not match the CRC-32 stored in the "
                        "file (a bit flip or a broken copy); copy it again from its source, or retrain")


def load_torch_file(path: str | Path, what: str, trust_pickle: bool = False, hint: str = "", mmap: bool = False,
                    pickle_module: Any = None) -> Any:
    """``torch.load(path)`` on the CPU after :func:`check_archive`: tensors and plain data only, or with
    ``trust_pickle`` any pickled object (with a warning; ``pickle_module`` may replace the unpickler). Every
    failure is a :class:`UserError` naming ``path`` (``hint`` appended to those of damaged or foreign files)."""
    check_archive(path, what)
    if trust_pickle:
        warnings.warn(f"--trust_pickle: unpickling {path}, which can run arbitrary code; do this only with files "
                      "from a source you trust", UserWarning, stacklevel=3)
        extra = {"pickle_module": pickle_module} if pickle_module is not None else {}
        return torch.load(path, map_location="cpu", weights_only=False, **extra)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found is None:  # damaged, or no pickle at all
            raise UserError(f"cannot read {what} {path}: {str(err).strip().splitlines()[-1]}{hint}") from err
        raise UserError(f"{what} {path} holds pickled Python objects ({found.group(1)}), not only tensors and plain "
                        f"data; unpickling runs code from the file: if you trust its source pass {TRUST_FLAG}") from err
    except Exception as err:  # torch raises many types for a damaged or foreign file
        raise UserError(f"cannot read {what} {path}: {err.__class__.__name__}: {err}{hint}") from err
