"""``ODINEvalCallback``: OOD detection metrics of the baseline and the paper's method (the registry's
``default_methods()``; any other method of ``odin_pl.methods``) after each validation epoch."""

from __future__ import annotations

from typing import Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader, Dataset, Subset

from datamodules.ood import OODDataModule, check_distinct_names
from odin_pl.distributed import shard_indices
from odin_pl.methods import Setting, create_method, default_methods, method_with_role, score_batch
from odin_pl.training.epoch_metrics import log_global
from odin_pl.metrics import OODMetrics
from odin_pl.errors import UserError
from odin_pl.spec import ImageSpec


class ODINEvalCallback(Callback):
    """Scores the validation set and each OOD set with ``methods`` (default: ``default_methods()``, the baseline
    and the paper's method) at fixed settings (the paper's method at ``temperature`` and ``epsilon``); logs
    ``ood/<set>/<method>/<metric>`` for every metric of :func:`odin_pl.metrics.ood_metrics`, or
    ``ood/<name>/<set>/<method>/<metric>`` with a ``name``. Several callbacks in one run need distinct names
    (refused at setup otherwise: their numbers would share keys).

    ``params``: ``{method: {parameter: value}}``; a parameter left out takes the first value of the method's grid
    in its tie order (e.g. Energy at T = 1). Methods that need a fit on training data are not offered here.

    Works inside ``fit`` (validation under no_grad) and ``validate`` (inference mode). Under DDP every process
    scores its own shard of each set (no sample twice) and the metrics are computed on the gathered scores.
    ``ood``: OOD set names (see ``datamodules.ood``) or OODDataModules; they are converted to the in-distribution
    image spec: the model's ``image_spec``, else the DataModule's, else ``image_spec`` (an ImageSpec or its dict),
    so that any LightningModule and DataModule can use the callback.
    """

    def __init__(self, ood: Sequence[str | OODDataModule] = ("gaussian", "uniform"), temperature: float = 1000.0,
                 epsilon: float = 0.0014, batch_size: int = 256, num_images: int | None = None,
                 every_n_epochs: int = 1, data_root: str | None = None, seed: int = 0, name: str | None = None,
                 methods: Sequence[str] | None = None, params: dict[str, dict[str, float]] | None = None,
                 image_spec: ImageSpec | dict | None = None) -> None:
        methods = default_methods() if methods is None else list(methods)
        paper = method_with_role("paper")
        params = {paper: {"temperature": temperature, "epsilon": epsilon}, **(params or {})}
        self.settings = {method: _fixed_setting(method, params.get(method, {})) for method in methods}
        unknown = sorted(set(params) - set(methods) - {paper})
        if unknown:
            raise UserError(f"params names {', '.join(unknown)}, not among methods ({', '.join(methods)})")
        if not self.settings:
            raise UserError(f"ODINEvalCallback needs at least one method (e.g. methods={default_methods()})")
        if every_n_epochs < 1:
            raise UserError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        if name is not None and (not name or "/" in name):
            raise UserError(f"ODINEvalCallback name must be a non-empty string without '/', got {name!r}")
        self.ood = [o if isinstance(o, OODDataModule) else
                    OODDataModule(o, data_root=data_root, batch_size=batch_size, seed=seed, num_images=num_images)
                    for o in ood]
        if not self.ood:
            raise UserError("ODINEvalCallback needs at least one OOD set")
        check_distinct_names([o.source for o in self.ood])
        self.batch_size = batch_size
        self.every_n_epochs = every_n_epochs
        self.name = name
        self.image_spec = ImageSpec.from_dict(image_spec) if image_spec is not None else None
        self._spec: ImageSpec | None = None

    @property
    def prefix(self) -> str:
        """Where the metrics are logged: ``ood/`` or ``ood/<name>/``."""
        return f"ood/{self.name}/" if self.name else "ood/"

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if any(isinstance(c, ODINEvalCallback) and c is not self and c.prefix == self.prefix
               for c in trainer.callbacks):
            raise UserError(f"two ODINEvalCallbacks would both log under {self.prefix}<set>/<method>/<metric>: give "
                            "each a distinct name (ODINEvalCallback(name=...), in a config "
                            "`init_args: {name: ...}`)")
        datamodule = trainer.datamodule
        spec = getattr(pl_module, "image_spec", None) or getattr(datamodule, "image_spec", None) or self.image_spec
        if not isinstance(spec, ImageSpec):
            raise UserError("ODINEvalCallback needs the in-distribution image spec: give "
                            "ODINEvalCallback(image_spec=ImageSpec(size, channels, mean, std, class_names)), or an "
                            "`image_spec` property to the model or the DataModule")
        self._spec = spec
        for ood in self.ood:
            ood.bind(spec, getattr(datamodule, "data_root", None))

    def _score(self, trainer: pl.Trainer, pl_module: pl.LightningModule, dataset: Dataset,
               metrics: dict[str, OODMetrics], is_in: bool) -> None:
        indices = shard_indices(len(dataset), trainer.global_rank, trainer.world_size)
        loader = DataLoader(Subset(dataset, indices), batch_size=self.batch_size, shuffle=False)
        index_iter = iter(torch.tensor(indices, dtype=torch.long).split(self.batch_size))
        if not indices:  # a set smaller than the world: still take part in the metric's sync with typed states
            empty = torch.empty(0, dtype=torch.float64, device=pl_module.device)
            for metric in metrics.values():
                metric.update(empty, is_in, torch.empty(0, dtype=torch.long, device=pl_module.device))
        for images, _ in loader:
            images = images.to(pl_module.device, dtype=next(pl_module.parameters()).dtype)
            scores = score_batch(pl_module, images, {m: [s] for m, s in self.settings.items()}, self._spec.std)
            batch_indices = next(index_iter).to(pl_module.device)
            for method in self.settings:
                for key, metric in metrics.items():
                    if key.endswith(f"/{method}"):
                        metric.update(scores[method][0], is_in, batch_indices)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        fitting = trainer.state.fn == TrainerFn.FITTING
        if trainer.sanity_checking or (fitting and (trainer.current_epoch + 1) % self.every_n_epochs):
            return
        val = trainer.val_dataloaders
        val_dataset = (val[0] if isinstance(val, (list, tuple)) else val).dataset
        metrics = {f"{ood.name}/{method}": OODMetrics().to(pl_module.device)
                   for ood in self.ood for method in self.settings}
        self._score(trainer, pl_module, val_dataset, metrics, is_in=True)
        for ood in self.ood:
            ood.setup()
            subset = {k: m for k, m in metrics.items() if k.startswith(f"{ood.name}/")}
            self._score(trainer, pl_module, ood.dataset, subset, is_in=False)
        log_global(pl_module, {f"{self.prefix}{key}/{name}": value for key, metric in metrics.items()
                               for name, value in metric.compute().items()})


def _fixed_setting(name: str, params: dict[str, float]) -> Setting:
    """The method's setting: ``params`` where given, else the first of its grid in its tie order."""
    method = create_method(name)
    if method.needs_fit:
        raise UserError(f"method {name!r} needs a fit on training data: evaluate it with evaluate.py, not in the "
                        "callback (it would refit every validation epoch)")
    grid = method.grid({key: [value] for key, value in params.items()})
    return min(grid, key=method.tie_key)
