"""The one door from a name read out of a file to Python code: a DataModule class path recorded in a checkpoint.

A checkpoint is data; the class it names is code. :func:`datamodule_class` imports a class path only when it
names a module of the project's ``datamodules`` package (checked from the module's location before anything is
imported) and a :class:`~lightning.pytorch.LightningDataModule` subclass (checked before it is called). With
``trust`` (``--trust_pickle true``: the file's source is trusted) any importable module may be named; the class
must still be a LightningDataModule. A class from elsewhere can always be given on the command line instead
(``--data CLASS``), which replaces the checkpoint's.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from lightning.pytorch import LightningDataModule

from odin_pl.errors import TRUST_FLAG, UserError

PROJECT_PACKAGE = "datamodules"
def _project_module(module_name: str) -> bool:
    """Whether ``module_name`` is the ``datamodules`` package or a module whose file lies inside it (a name there
    that does not exist passes: importing it fails)."""
    if module_name.split(".")[0] != PROJECT_PACKAGE:
        return False
    package = importlib.util.find_spec(PROJECT_PACKAGE)
    spec = importlib.util.find_spec(module_name)  # imports the parent packages (the project's own) only
    if spec is None:
        return True
    if package is None or spec.origin is None:
        return False
    roots = [Path(p).resolve() for p in package.submodule_search_locations or ()]
    return any(Path(spec.origin).resolve().is_relative_to(root) for root in roots)


def datamodule_class(class_path: str, source: str, trust: bool = False) -> type[LightningDataModule]:
    """The LightningDataModule class named by ``class_path`` (``package.module.Class``) read from ``source`` (a
    file, named in errors). Refused unless it lies in the project's ``datamodules`` package or ``trust`` is set."""
    module_name, _, class_name = str(class_path).rpartition(".")
    where = f"{source} names the DataModule class {class_path!r}"
    if not module_name or not all(part.isidentifier() for part in (*module_name.split("."), class_name)):
        raise UserError(f"{where}, which is not a class path (package.module.Class)")
    try:
        allowed = trust or _project_module(module_name)
    except (ImportError, ValueError) as err:
        raise UserError(f"{where}, whose module cannot be found ({err})") from err
    if not allowed:
        raise UserError(f"{where}, which is outside the project's {PROJECT_PACKAGE} package: refused (importing "
                        f"it could run code from the file's author); if you trust the checkpoint's source pass "
                        f"{TRUST_FLAG}, or give the DataModule yourself with --data CLASS")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise UserError(f"{where}, which cannot be imported ({err}); is the code that trained it installed? "
                        "Give the DataModule with --data CLASS otherwise") from err
    if not (isinstance(cls, type) and issubclass(cls, LightningDataModule)):
        raise UserError(f"{where}, which is not a LightningDataModule: refused (even with {TRUST_FLAG})")
    return cls
