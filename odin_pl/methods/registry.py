"""Register, list and create detection methods by name (in the style of timm's model registry)."""

from __future__ import annotations

from typing import TypeVar

from odin_pl.methods.base import Method
from odin_pl.errors import UserError

_METHODS: dict[str, type[Method]] = {}
M = TypeVar("M", bound=type[Method])


def register_method(cls: M) -> M:
    """Class decorator: make ``cls`` available as ``create_method(cls.name)``."""
    if cls.name in _METHODS and _METHODS[cls.name] is not cls:
        raise UserError(f"a method named {cls.name!r} is already registered ({_METHODS[cls.name].__module__})")
    _METHODS[cls.name] = cls
    return cls


def list_methods() -> list[str]:
    """The registered method names, in registration order."""
    return list(_METHODS)


def create_method(name: str) -> Method:
    """A new instance of the method registered as ``name``."""
    if name not in _METHODS:
        raise UserError(f"unknown method {name!r}; the registered methods are {', '.join(_METHODS)}")
    return _METHODS[name]()
