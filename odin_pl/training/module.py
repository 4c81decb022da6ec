"""``ImageClassifier``: a thin LightningModule around any timm-registered backbone."""

from __future__ import annotations

import inspect
from functools import partial
from typing import Any, Literal, Sequence

import lightning.pytorch as pl
import timm
import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn

import odin_pl.models  # noqa: F401  (registers the project's models with timm)
from odin_pl.training.epoch_metrics import ClassificationTotals, log_global
from odin_pl.training.rng import rng_states, set_rng_states
from odin_pl.spec import ImageSpec
from odin_pl.errors import UserError


def create_backbone(name: str, num_classes: int, spec: ImageSpec, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, num_classes, in_chans=spec.channels)``, plus ``img_size=spec.size`` for
    entrypoints that name an ``img_size`` argument (the MLPs, which must know their input size)."""
    if not timm.is_model(name):
        raise UserError(f"unknown backbone {name!r}: use a model registered in timm (timm.list_models()) or by "
                        "odin_pl.models (hendrycks_mlp, densenet_bc_100, wrn_28_10, wrn_40_4)")
    if "img_size" in inspect.signature(timm.models.model_entrypoint(name)).parameters:
        kwargs.setdefault("img_size", spec.size)
    return timm.create_model(name, num_classes=num_classes, in_chans=spec.channels, **kwargs)


def one_cycle_factor(step: int, total_steps: int, peak_fraction: float) -> float:
    """The one-cycle learning-rate factor (Smith & Topin 2017; Page 2018's piecewise-linear form) at optimizer step
    ``step`` of ``total_steps``: with t = (step + 1/2) / total_steps, t / p up to the peak p = ``peak_fraction``,
    then (1 - t) / (1 - p) down to 0 at the end of training."""
    t = (step + 0.5) / total_steps
    return t / peak_fraction if t <= peak_fraction else max(0.0, (1 - t) / (1 - peak_fraction))


class ImageClassifier(pl.LightningModule):
    """Cross-entropy training of a backbone chosen by name; the checkpoint records the image spec.

    The backbone is built in ``__init__`` when ``image_spec`` is given (as when loading a checkpoint), else in
    ``configure_model`` from the trainer's DataModule. Learning-rate ``lr_milestones`` are fractions of
    ``max_epochs`` at which the rate is multiplied by ``lr_gamma`` (the paper: 0.5 and 0.75, gamma 0.1).
    ``lr_schedule="one_cycle"`` instead changes the rate at every optimizer step: :func:`one_cycle_factor`, rising
    linearly from 0 to ``lr`` over the first ``lr_peak_fraction`` of training and back to 0 at its end.
    ``weight_decay_scope="hidden_weights"`` puts the L2 penalty on hidden-layer weights only (the MNIST MLP
    recipe); with Adam or SGD, weight_decay w adds the gradient of (w / 2) * sum(theta^2).
    """

    def __init__(
        self,
        backbone: str = "hendrycks_mlp",
        num_classes: int | None = None,
        image_spec: dict | None = None,
        backbone_kwargs: dict | None = None,
        optimizer: Literal["sgd", "adam"] = "sgd",
        lr: float = 0.1,
        momentum: float = 0.9,
        nesterov: bool = True,
        weight_decay: float = 5e-4,
        weight_decay_scope: Literal["all", "hidden_weights"] = "all",
        lr_milestones: Sequence[float] = (0.5, 0.75),
        lr_gamma: float = 0.1,
        lr_schedule: Literal["multistep", "one_cycle"] = "multistep",
        lr_peak_fraction: float = 0.25,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if any(not 0 < m < 1 for m in lr_milestones):
            raise UserError(f"lr_milestones are fractions of training in (0, 1), got {list(lr_milestones)}")
        if lr_schedule not in ("multistep", "one_cycle"):
            raise UserError(f"unknown lr_schedule {lr_schedule!r}; use 'multistep' or 'one_cycle'")
        if not 0 < lr_peak_fraction < 1:
            raise UserError(f"lr_peak_fraction is a fraction of training in (0, 1), got {lr_peak_fraction}")
        self.save_hyperparameters()
        self.net: nn.Module | None = None
        self._totals = ClassificationTotals()
        self._resumed_rng_states: dict[str, Any] | None = None
        if image_spec is not None:
            self._build(ImageSpec.from_dict(image_spec))

    @property
    def image_spec(self) -> ImageSpec | None:
        spec = self.hparams.get("image_spec")
        return ImageSpec.from_dict(spec) if spec is not None else None

    def _build(self, spec: ImageSpec) -> None:
        num_classes = self.hparams.num_classes or spec.num_classes
        if not num_classes:
            raise UserError("num_classes is unknown: set model.num_classes or give the data set class names")
        self.hparams.update(image_spec=spec.to_dict(), num_classes=num_classes)
        self.net = create_backbone(self.hparams.backbone, num_classes, spec, **(self.hparams.backbone_kwargs or {}))
        if self.hparams.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        if self.hparams.compile:
            self.net.compile()

    def configure_model(self) -> None:
        if self.net is not None:
            return
        spec = getattr(getattr(self._trainer, "datamodule", None), "image_spec", None)
        if spec is None:
            raise UserError("ImageClassifier needs an image spec: pass image_spec=... or train with a DataModule "
                            "that has an `image_spec` property")
        self._build(spec)

    def prepare_input(self, x: Tensor) -> Tensor:
        """x in the memory format the backbone runs in (channels_last when configured)."""
        return x.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else x

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.prepare_input(x))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(dim=1) == y).float().mean()
        self.log_dict({"train/loss": loss, "train/acc": acc}, on_step=True, on_epoch=True, prog_bar=True,
                      batch_size=len(y), sync_dist=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self._totals.update(self(x), y)

    test_step = validation_step

    def _start_evaluation(self) -> None:
        self._totals.reset(self.device)

    def _log_evaluation(self, stage: str) -> None:
        """``<stage>/loss`` and ``<stage>/acc`` over all images of all processes (see
        odin_pl.training.epoch_metrics)."""
        totals = self._totals.compute(partial(self.trainer.strategy.reduce, reduce_op="sum"))
        log_global(self, {f"{stage}/{name}": value for name, value in totals.items()}, prog_bar=True)

    on_validation_epoch_start = on_test_epoch_start = _start_evaluation

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")

    def _parameter_groups(self) -> list[dict]:
        decay = self.hparams.weight_decay
        if self.hparams.weight_decay_scope == "all":
            return [{"params": list(self.net.parameters()), "weight_decay": decay}]
        if not hasattr(self.net, "hidden_weights"):
            raise UserError(f"weight_decay_scope='hidden_weights' needs a backbone with hidden_weights() "
                            f"(the MLPs); {self.hparams.backbone} has none")
        hidden = {id(p) for p in self.net.hidden_weights()}
        return [{"params": [p for p in self.net.parameters() if id(p) in hidden], "weight_decay": decay},
                {"params": [p for p in self.net.parameters() if id(p) not in hidden], "weight_decay": 0.0}]

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        groups = self._parameter_groups()
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov)
        elif hp.optimizer == "adam":
            optimizer = torch.optim.Adam(groups, lr=hp.lr)
        else:
            raise UserError(f"unknown optimizer {hp.optimizer!r}; use 'sgd' or 'adam'")
        if hp.lr_schedule == "one_cycle":
            factor = partial(one_cycle_factor, total_steps=self.trainer.estimated_stepping_batches,
                             peak_fraction=hp.lr_peak_fraction)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        max_epochs = self.trainer.max_epochs
        if not hp.lr_milestones:
            return {"optimizer": optimizer}
        if max_epochs is None or max_epochs < 1:
            raise UserError("lr_milestones are fractions of trainer.max_epochs: set max_epochs or lr_milestones: []")
        milestones = sorted({max(1, round(m * max_epochs)) for m in hp.lr_milestones})
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=hp.lr_gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record which DataModule class built the data (evaluate.py rebuilds it) and the global generators'
        states (a resumed run continues them)."""
        record = checkpoint.setdefault("odin_pl", {})
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None:
            cls = type(datamodule)
            record["datamodule_class"] = f"{cls.__module__}.{cls.__qualname__}"
        record["rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """When a trainer resumes ``fit`` from ``checkpoint``, keep its generator states for
        :meth:`on_train_epoch_start` (restoring them now would let the sanity check and the set-up draw from them)."""
        if self._trainer is not None and self._trainer.state.fn == TrainerFn.FITTING:
            self._resumed_rng_states = (checkpoint.get("odin_pl") or {}).get("rng_states")

    def on_train_epoch_start(self) -> None:
        if self._resumed_rng_states is not None:
            set_rng_states(self._resumed_rng_states)
            self._resumed_rng_states = None
