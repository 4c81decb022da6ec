"""What the paper analyses need, and the per-image work they share (seeded samples, clean logits)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from odin_pl.files import atomic_write, named_file
from odin_pl.methods.features import Fits
from odin_pl.report.plots import save_figure
from odin_pl.protocol.records import ProtocolResult
from odin_pl.protocol.tuning import split_seed

IN = "in_distribution"


@dataclass(frozen=True)
class AnalysisOutput:
    """What one analysis wrote: its numbers (as in its JSON file), the JSON file and the figure, if any."""

    name: str
    numbers: dict[str, Any]
    json_path: Path
    figure_path: Path | None

    @property
    def paths(self) -> list[Path]:
        return [self.json_path] if self.figure_path is None else [self.json_path, self.figure_path]


@dataclass
class AnalysisContext:
    """The eval-mode model, its input normalization, the data sets, the protocol's result and where to write.

    ``num_images``: images per set for the per-image analyses (a seeded sample of each set's test split) and the
    size of the distance samples. ``fits``: the run's fits of its feature methods, if any. Work that several
    analyses need is computed once (:meth:`cached`).
    """

    model: nn.Module
    input_mean: Sequence[float]
    input_std: Sequence[float]
    in_dataset: Dataset
    ood_datasets: Mapping[str, Dataset]
    result: ProtocolResult
    output_dir: Path
    seed: int = 0
    batch_size: int = 256
    device: str | torch.device = "cpu"
    num_images: int = 1000
    class_names: Sequence[str] = ()
    fits: Fits | None = None
    _cache: dict[Any, Any] = field(default_factory=dict, init=False, repr=False)

    def cached(self, key: Any, compute: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def dataset(self, name: str) -> Dataset:
        return self.in_dataset if name == IN else self.ood_datasets[name]

    def seed_for(self, name: str, purpose: str) -> int:
        return split_seed(self.seed, f"{purpose}/{name}")

    def test_indices(self, name: str) -> Tensor:
        """The protocol's test split of a set (sorted; the order of ``result.test_scores``)."""
        return self.result.splits[name].test

    def sample(self, name: str) -> Tensor:
        """Up to ``num_images`` test-split indices in seeded random order (a prefix is a random subset)."""
        def draw() -> Tensor:
            test = self.test_indices(name)
            order = torch.randperm(len(test), generator=torch.Generator().manual_seed(self.seed_for(name, "sample")))
            return test[order[:self.num_images]]
        return self.cached(("sample", name), draw)

    def batches(self, name: str, indices: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
        """(normalized images on the model's device and dtype, labels) of ``indices`` of a set."""
        dtype = next(self.model.parameters()).dtype
        loader = DataLoader(Subset(self.dataset(name), indices.tolist()), batch_size=self.batch_size)
        for images, labels in loader:
            yield images.to(device=self.device, dtype=dtype), torch.as_tensor(labels)

    def forward(self, name: str, indices: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Clean logits f(x) (CPU, float64) and labels of ``indices`` (default: the set's sample), computed once."""
        indices = self.sample(name) if indices is None else indices

        @torch.no_grad()
        def compute() -> tuple[Tensor, Tensor]:
            outputs = [(self.model(x).double().cpu(), y) for x, y in self.batches(name, indices)]
            return torch.cat([o[0] for o in outputs]), torch.cat([o[1] for o in outputs])
        return self.cached(("forward", name, tuple(indices.tolist())), compute)

    def logits(self, name: str) -> Tensor:
        """Clean logits of the set's sample."""
        return self.forward(name)[0]

    def write(self, name: str, data: dict[str, Any], figure: Figure | None) -> AnalysisOutput:
        """``<name>.json`` and, when there is a figure, ``<name>.png`` in the output folder."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        numbers = {"analysis": name, **data}
        json_path = named_file(self.output_dir, f"{name}.json")
        with atomic_write(json_path) as handle:
            handle.write(json.dumps(numbers, indent=1))
        figure_path = None if figure is None else save_figure(figure, named_file(self.output_dir, f"{name}.png"))
        return AnalysisOutput(name, numbers, json_path, figure_path)
