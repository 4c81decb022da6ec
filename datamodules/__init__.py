"""LightningDataModules: in-distribution data sets and OOD sets."""

from datamodules.base import ImageDataModule, resolve_data_root
from datamodules.cifar import CIFAR10DataModule, CIFAR80DataModule, CIFAR100DataModule, cifar80_split
from datamodules.digits import DigitsDataModule
from datamodules.download import DatasetNotFoundError
from datamodules.image_folder import ImageFolderDataModule
from datamodules.mnist import MNISTDataModule
from datamodules.ood import OODDataModule, available_ood_sets, build_ood_dataset, register_ood
from datamodules import ood_natural, ood_sets  # noqa: F401  (register the paper's named OOD sets)
from datamodules.ood import ood_set_name
from datamodules.openood import ImageListDataset, Preprocessing, read_image_list
from datamodules.openood_benchmarks import BENCHMARKS as OPENOOD_BENCHMARKS
from datamodules.openood_benchmarks import Benchmark, OpenOODSuite, build_openood_suite
from datamodules.openood_download import ImageRoot

__all__ = ["DigitsDataModule", "ImageDataModule", "OODDataModule", "available_ood_sets", "build_ood_dataset",
           "register_ood", "resolve_data_root"]
__all__ += ["CIFAR10DataModule", "CIFAR100DataModule", "CIFAR80DataModule", "DatasetNotFoundError",
            "ImageFolderDataModule", "MNISTDataModule", "cifar80_split"]
__all__ += ["ood_set_name"]
__all__ += ["Benchmark", "ImageListDataset", "ImageRoot", "OPENOOD_BENCHMARKS", "OpenOODSuite", "Preprocessing",
            "build_openood_suite", "read_image_list"]
