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


def method_with_role(role: str) -> str:
    """The name of the registered method that declares ``role`` (see :attr:`Method.roles`)."""
    names = [name for name, cls in _METHODS.items() if role in cls.roles]
    if len(names) != 1:
        raise LookupError(f"{len(names)} registered methods have the role {role!r} ({', '.join(names)}); expected 1")
    return names[0]


def default_methods() -> list[str]:
    """The methods evaluated when none are named: the baseline and the paper's method, in that order."""
    return [method_with_role("baseline"), method_with_role("paper")]


def create_method(name: str) -> Method:
    """A new instance of the method registered as ``name``."""
    if name not in _METHODS:
        raise UserError(f"unknown method {name!r}; the registered methods are {', '.join(_METHODS)}")
    return _METHODS[name]()
