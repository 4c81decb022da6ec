"""The fits of a run's fitted methods (``needs_fit``): one pass over the training images gives what every fit on
the training split receives, computed once, saved beside the run and reused only where it matches.

* :func:`training_set`: the DataModule's training split with the test-time transform
  (``load_split(train=True, augment=False)``), or a seeded subset of it (``--fit_images``); :func:`heldout_set`:
  the labelled held-out split of the methods that fit there (``fit_split = "heldout"``);
* :func:`fit_data`: one pass over a split on any number of processes (each its shard, gathered: exactly one
  process's result): h [N, D], the logits and labels in index order, with the classifier and ``scan`` for a
  method's further passes (:class:`~odin_pl.methods.base.FitData`);
* :func:`prepare_fits`: process 0 fits each method on its split's fit data (float64), saves
  ``<folder>/<method>.pt`` and sends the fits to the other processes; a saved fit is reused (``reuse``) only when
  its method, settings and context (weights and the split's images' SHA-256, image count, dtype) equal the run's.

A fit file holds ``{"format": "odin_pl.fit", "method", "settings", "context", "fit": {name: Tensor}}``; its own
SHA-256 (:class:`SavedFit`) goes into the score files' context, results.json and the detectors that use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from odin_pl.distributed import broadcast_from_zero, gather_shards, shard_loader, world
from odin_pl.methods.features import FeatureModel, Fits, feature_model
from odin_pl.fingerprint import FileHashes, dataset_sha256, file_sha256
from odin_pl.methods import Batch, FitData, Needs, Setting
from odin_pl.protocol.plan import MethodGrid
from odin_pl.files import named_file, save_atomically
from odin_pl.protocol.tuning import split_indices
from odin_pl.errors import MissingFileError, UserError
from odin_pl.progress import with_progress

FIT_FORMAT = "odin_pl.fit"


@dataclass(frozen=True)
class SavedFit:
    """A method's fit (``tensors``), the settings and context it was made for, its file and the file's SHA-256."""

    method: str
    settings: list[list[float]]
    context: dict[str, Any]
    tensors: dict[str, Tensor] = field(repr=False)
    path: Path
    sha256: str

    def describe(self) -> dict[str, Any]:
        """What results.json records of the fit."""
        return {"file": str(self.path), "sha256": self.sha256, **self.context}


def _settings(settings: Sequence[Setting]) -> list[list[float]]:
    return [[float(v) for v in setting] for setting in settings]


def save_fit(path: Path, method: str, settings: Sequence[Setting], context: Mapping[str, Any],
             tensors: Mapping[str, Tensor]) -> SavedFit:
    """Write a fit file atomically; returns it with its SHA-256."""
    content = {"format": FIT_FORMAT, "method": method, "settings": _settings(settings), "context": dict(context),
               "fit": {name: t.detach().cpu() for name, t in tensors.items()}}
    save_atomically(content, path)
    return SavedFit(method, content["settings"], content["context"], content["fit"], path, file_sha256(path))


def load_fit(path: str | Path, sha256: str | None = None) -> SavedFit:
    """The fit saved at ``path``; with ``sha256``, a ValueError unless the file still has that SHA-256."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"fit file {path} does not exist; evaluate.py writes <output_dir>/fits/<method>.pt "
                               "for the fitted methods")
    digest = file_sha256(path)
    if sha256 is not None and digest != sha256:
        raise UserError(f"fit file {path} has SHA-256 {digest}, not the {sha256} it was used with: it was "
                        "changed or refitted since; run evaluate.py again to make a matching detector")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"{path} is not a readable fit file: {err}") from err
    if not isinstance(content, dict) or content.get("format") != FIT_FORMAT:
        raise UserError(f"{path} is not an odin_pl fit file (no \"format\": \"{FIT_FORMAT}\")")
    return SavedFit(content["method"], content["settings"], content["context"], content["fit"], path, digest)


def training_set(datamodule: Any, fit_images: int | None = None, seed: int = 0) -> Dataset:
    """The in-distribution training split with the test-time transform, or a seeded subset of ``fit_images`` of
    its images (kept in index order)."""
    load_split = getattr(datamodule, "load_split", None)
    if not callable(load_split):
        raise UserError(f"the fitted methods of --methods fit on the in-distribution training images, "
                        f"and the DataModule {type(datamodule).__name__} has no training split "
                        "(load_split(train=True, augment=False)): give --data a DataModule of datamodules.* that "
                        "has one, or drop these methods from --methods")
    try:
        train = load_split(train=True, augment=False)
    except FileNotFoundError as err:
        raise MissingFileError(f"the fitted methods of --methods fit on the in-distribution training images, which "
                               f"are not available: {err}") from err
    if len(train) == 0:
        raise UserError("the in-distribution training split is empty: the fitted methods have nothing to fit on")
    if fit_images is None:
        return train
    if fit_images > len(train):
        raise UserError(f"--fit_images {fit_images} is more than the {len(train)} training images: give at most "
                        f"{len(train)}, or leave it out to fit on all of them")
    return Subset(train, split_indices(len(train), fit_images, seed)[0].tolist())


def heldout_set(datamodule: Any, in_tuning: Dataset) -> Dataset:
    """The labelled held-out in-distribution split of the methods with ``fit_split = "heldout"``: the DataModule's
    validation split where it holds one out of the training images (``val_split`` > 0), else ``in_tuning`` (the
    in-distribution tuning split of the protocol)."""
    if getattr(datamodule, "val_split", 0) > 0:
        datamodule.setup("validate")
        return datamodule.val_set
    return in_tuning


class Features(NamedTuple):
    """One pass over a split: h [N, D] and the logits [N, C] (in the model's dtype) and labels [N] (int64)."""

    features: Tensor
    logits: Tensor
    labels: Tensor


@torch.no_grad()
def training_features(model: FeatureModel, dataset: Dataset, *, batch_size: int = 256, num_workers: int = 0,
                      device: str | torch.device = "cpu", dtype: torch.dtype | None = torch.float32,
                      desc: str | None = None) -> Features:
    """h, the logits and labels of every image of ``dataset``, on the CPU in index order; in a process group
    every process passes its shard and all get the gathered result. The logits are g(h) of the gathered h in one
    call, so that they do not depend on how the images were batched or sharded (the last bits of a matrix product
    do): fits are exact across any number of processes."""
    features, labels = [], []
    for images, targets in with_progress(shard_loader(dataset, batch_size, num_workers), desc, enabled=world()[0] == 0):
        h, _ = model(images.to(device=device, dtype=dtype))  # the first batch checks the model
        features.append(h.cpu())
        labels.append(torch.as_tensor(targets, dtype=torch.long))
    if not features:  # an empty shard (fewer images than processes): the dimensions from one image
        h = model.features(dataset[0][0][None].to(device=device, dtype=dtype))
        features, labels = [h.new_empty(0, h.shape[1]).cpu()], [torch.empty(0, dtype=torch.long)]
    n = len(dataset)
    h = gather_shards(torch.cat(features).T.contiguous(), n).T
    return Features(h, model.classifier(h.to(device)).cpu(), gather_shards(torch.cat(labels), n))


def fit_data(model: nn.Module, dataset: Dataset, *, batch_size: int = 256, num_workers: int = 0,
             device: str | torch.device = "cpu", desc: str | None = None, seed: int = 0) -> FitData:
    """The :class:`FitData` of ``dataset`` (yielding (normalized image, label)): one pass of
    :func:`training_features` (sharded over a process group), features and logits in float64, and ``scan``
    over the same images (on the calling process alone, in index order) for further passes; ``seed``: the run's."""
    parameter = next(model.parameters(), None)
    dtype = parameter.dtype if parameter is not None else None  # a model without weights takes the images as they are
    features = feature_model(model)
    passed = training_features(features, dataset, batch_size=batch_size, num_workers=num_workers, device=device,
                               dtype=dtype, desc=desc)

    def scan(needs: Needs, indices: Sequence[int] | None) -> Iterator[tuple[Batch, Tensor]]:
        images = Subset(dataset, list(indices)) if indices is not None else dataset
        for x, targets in DataLoader(images, batch_size=batch_size, num_workers=num_workers):
            yield Batch(model, x.to(device=device, dtype=dtype), needs=needs), torch.as_tensor(targets).long()

    return FitData(passed.features.double(), passed.labels, passed.logits.double(), features.classifier, scan, seed)


@dataclass
class RunFits:
    """The fits of a run: what scoring uses (``fits``), the saved files by method, the method grids the fits can
    score (a grid without the values its fit cannot score), notes for the user and the methods whose saved fit was
    reused."""

    fits: Fits
    saved: dict[str, SavedFit]
    methods: list[MethodGrid]
    notes: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)

    @property
    def sha256(self) -> dict[str, str]:
        """Per fitted method, its fit file's SHA-256 (part of the context of the run's score files)."""
        return {name: saved.sha256 for name, saved in self.saved.items()}


def fit_file(folder: Path, method: str) -> Path:
    """``<folder>/<method>.pt``, the method's fit file (its name checked by :func:`odin_pl.files.named_file`)."""
    return named_file(folder, f"{method}.pt")


def _saved_fits(folder: Path, grids: Sequence[MethodGrid], context: Mapping[str, Any]
                ) -> tuple[dict[str, SavedFit], list[str]]:
    """The fits saved in ``folder`` that were made for their method's settings and this context, and the names
    of the files that were not (stale or unreadable)."""
    found, stale = {}, []
    for grid in grids:
        path = fit_file(folder, grid.name)
        if not path.is_file():
            continue
        try:
            saved = load_fit(path)
        except ValueError:
            stale.append(path.name)
            continue
        if (saved.method, saved.settings, saved.context) == (grid.name, _settings(grid.settings), dict(context)):
            found[grid.name] = saved
        else:
            stale.append(path.name)
    return found, stale


def prepare_fits(model: nn.Module, methods: Sequence[MethodGrid], train_set: Dataset | None, *, folder: Path,
                 weights_sha256: str, hashes: FileHashes | None = None, reuse: bool = False,
                 fit_missing: bool = True, batch_size: int = 256, num_workers: int = 0,
                 device: str | torch.device = "cpu", progress: bool = False,
                 heldout: Dataset | None = None, seed: int = 0) -> RunFits:
    """The fits of the methods with ``needs_fit`` among ``methods``, saved to ``folder``: on ``train_set``, or on
    ``heldout`` (:func:`heldout_set`) for those with ``fit_split = "heldout"``.

    One pass over each split's images gives every missing fit there (a method may take further passes of its own);
    their files are hashed through ``hashes``. ``reuse``: take a saved fit that matches (resume);
    ``fit_missing=False``: fail instead of fitting (work on a finished run). In a process group, process 0 reads,
    fits and saves, and sends the fits to the others; each process's part of the shared pass comes from its own
    shard. ``seed``: the run's, for the fits that draw seeded subsets (nnguide's bank, gram's held-out images).
    """
    feature_model(model)  # refuses a model without the features first
    for grid in methods:
        if grid.method.needs_fit:
            fit_file(folder, grid.name)  # a name that cannot be a file name is refused before any pass
    rank = world()[0]
    splits = {"train": ("train_images_sha256", train_set, "training"),
              "heldout": ("heldout_images_sha256", heldout, "held-out")}
    saved: dict[str, SavedFit] = {}
    reused, notes = [], []
    for split, (key, dataset, what) in splits.items():
        fitted = [grid for grid in methods if grid.method.needs_fit and grid.method.fit_split == split]
        if not fitted:
            continue
        if dataset is None:
            raise UserError(f"method(s) {', '.join(grid.name for grid in fitted)} fit on the {split} split, which "
                            "this run does not have")
        context = broadcast_from_zero({"weights_sha256": weights_sha256, key: dataset_sha256(dataset, hashes),
                                       "n_images": len(dataset), "seed": seed,
                                       "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}
                                      if rank == 0 else None)
        found, stale = broadcast_from_zero(_saved_fits(folder, fitted, context) if rank == 0 and reuse else ({}, []))
        saved.update(found)
        reused += list(found)
        missing = [grid for grid in fitted if grid.name not in found]
        if missing and not fit_missing:
            files = ", ".join(str(fit_file(folder, grid.name)) for grid in missing)
            raise UserError(f"{files}: missing, or made with other weights, training images or settings; run the "
                            "protocol (again) into this folder with --output.resume true first")
        notes += [f"{', '.join(stale)} in {folder}: made with other weights, training images or settings; fitted "
                  "again"] if stale else []
        if missing:
            data = fit_data(model, dataset, batch_size=batch_size, num_workers=num_workers, device=device,
                            desc=f"{what} features" if progress else None, seed=seed)
            made = {grid.name: save_fit(fit_file(folder, grid.name), grid.name, grid.settings, context,
                                        grid.method.fit(data, grid.settings))
                    for grid in missing} if rank == 0 else None
            saved.update(broadcast_from_zero(made))
    grids = []
    for grid in methods:
        if grid.name in saved:
            method = grid.method
            kept, note = method.settings_for_fit(grid.settings, saved[grid.name].tensors)
            grid = MethodGrid(method, tuple(kept), grid.fixed if grid.fixed in kept else
                              min(kept, key=method.tie_key))
            notes += [note] if note else []
        grids.append(grid)
    tensors = {name: {key: t.to(device) for key, t in fit.tensors.items()} for name, fit in saved.items()}
    return RunFits(Fits(tensors), saved, grids, notes, reused)
