"""The OOD suite of one evaluation: the test sets by name, and the sets used only for tuning."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from torch.utils.data import ConcatDataset, Dataset

from datamodules.ood import NOISE_KINDS, NoiseDataset, build_ood_dataset, check_distinct_names, ood_set_name
from odin_pl.spec import ImageSpec
from odin_pl.errors import UserError

NOISE_TUNING_IMAGES = 500  # per noise kind, for transfer from "noise"
NOISE_TUNING_SEED_OFFSET = 1  # noise tuning images use a seed apart from the noise test sets


@dataclass
class OODSuite:
    """OOD test sets by name, what each was asked as (a name or a folder path), the default sets that were not
    available, and sets used only for tuning (``noise``)."""

    datasets: dict[str, Dataset] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    tuning_only: dict[str, Dataset] = field(default_factory=dict)


def noise_tuning_set(spec: ImageSpec, seed: int) -> Dataset:
    """500 Gaussian + 500 Uniform images, drawn with a seed apart from the noise test sets."""
    return ConcatDataset([NoiseDataset(kind, spec, NOISE_TUNING_IMAGES, seed + NOISE_TUNING_SEED_OFFSET)
                          for kind in NOISE_KINDS])


def build_ood_suite(requested: Sequence[str], default: Sequence[str], spec: ImageSpec, data_root: str | Path,
                    seed: int, num_images: int | None, download: bool, noise_tuning: bool,
                    exclude: Sequence[str | Path] = ()) -> OODSuite:
    """The sets ``requested`` (an error when one is missing, or when two share a name) or else the ``default``
    suite (a missing set is skipped, with why); with ``noise_tuning``, the ``noise`` tuning set too. Nothing under
    the ``exclude`` folders (the run's output) is read."""
    check_distinct_names(requested)
    suite = OODSuite()
    for name in requested or default:
        try:
            suite.datasets[ood_set_name(name)] = build_ood_dataset(name, spec, data_root, seed, num_images,
                                                                   download=download, exclude=exclude)
            suite.sources[ood_set_name(name)] = str(name)
        except FileNotFoundError as err:
            if requested:  # asked for by name: the user must fix it
                raise
            suite.skipped[str(name)] = str(err)
    if not suite.datasets:
        raise UserError(f"none of the OOD sets {list(requested or default)} is available: "
                        f"{'; '.join(suite.skipped.values())}")
    if noise_tuning:
        suite.tuning_only["noise"] = noise_tuning_set(spec, seed)
    return suite
