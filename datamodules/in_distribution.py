"""In-distribution data sets by name (``evaluate.py --dataset NAME``): the one place names map to DataModules."""

from __future__ import annotations

from datamodules.base import ImageDataModule
from datamodules.cifar import CIFAR10DataModule, CIFAR80DataModule, CIFAR100DataModule
from datamodules.digits import DigitsDataModule
from datamodules.mnist import MNISTDataModule

IN_DISTRIBUTION: dict[str, type[ImageDataModule]] = {
    "cifar10": CIFAR10DataModule,
    "cifar100": CIFAR100DataModule,
    "cifar80": CIFAR80DataModule,
    "mnist": MNISTDataModule,
    "digits": DigitsDataModule,
}

