"""In-distribution data sets by name (``evaluate.py --dataset NAME``): the one place names map to DataModules."""

from __future__ import annotations

from typing import Any

from datamodules.base import ImageDataModule
from datamodules.cifar import CIFAR10DataModule, CIFAR80DataModule, CIFAR100DataModule
from datamodules.digits import DigitsDataModule
from datamodules.mnist import MNISTDataModule
from odin_pl.errors import UserError

IN_DISTRIBUTION: dict[str, type[ImageDataModule]] = {
    "cifar10": CIFAR10DataModule,
    "cifar100": CIFAR100DataModule,
    "cifar80": CIFAR80DataModule,
    "mnist": MNISTDataModule,
    "digits": DigitsDataModule,
}


def in_distribution_datamodule(name: str, **kwargs: Any) -> ImageDataModule:
    """The DataModule of the data set ``name``; ``kwargs`` whose value is None are left to its defaults."""
    if name not in IN_DISTRIBUTION:
        raise UserError(f"unknown in-distribution data set {name!r}; use one of {', '.join(IN_DISTRIBUTION)}")
    return IN_DISTRIBUTION[name](**{k: v for k, v in kwargs.items() if v is not None})
