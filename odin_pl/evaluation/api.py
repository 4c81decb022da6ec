"""``odin_pl.evaluate``: evaluate.py's protocol in one call, on any eval-mode classifier and in-distribution data.

``evaluate(model, data, ood={"gaussian": ..., ...}, methods=["msp", "odin"], protocol="paper", **options)`` builds the
same :class:`~odin_pl.evaluation.options.ProtocolConfig` as ``evaluate.py protocol`` and runs the same code
(:func:`evaluate_target`, which ``evaluate.py`` calls too); the :class:`Evaluation` it returns gives the Markdown
table, the typed records, a DataFrame and the run folder that ``evaluate.py`` writes (:meth:`Evaluation.save`).

It runs on one process, or on every process of an existing ``torch.distributed`` process group (each scores its
shard; every process gets the result; process 0 saves). ``model`` is an ``nn.Module`` of logits on normalized
images (its weights are saved as ``weights.pt`` in the run folder: the run's scores and detectors are fingerprinted
by them) or the path of a checkpoint of train.py.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.distributed as dist
from lightning.pytorch import LightningDataModule
from torch import nn
from torch.utils.data import Dataset

from odin_pl.distributed import world
from odin_pl.errors import UserError
from odin_pl.files import save_atomically
from odin_pl.evaluation.options import (
    BootstrapOptions, OODOptions, OutputOptions, ProtocolConfig, RuntimeOptions, TuningOptions,
)
from odin_pl.evaluation.outputs import RunFiles, write_config, write_run
from odin_pl.evaluation.run import EvaluationTarget, ProtocolRun, evaluate_protocol, load_target
from odin_pl.evaluation.runtime import start_processes
from odin_pl.protocol.plan import MODES
from odin_pl.protocol.records import Record
from odin_pl.spec import ImageSpec

WEIGHTS_FILE = "weights.pt"  # an in-memory model's state_dict in the run folder
# The keyword options of evaluate(), each the field of one option group (evaluate.py's --<group>.<field>).
GROUPS: dict[str, type] = {"ood": OODOptions, "tuning": TuningOptions, "runtime": RuntimeOptions,
                           "output": OutputOptions, "bootstrap": BootstrapOptions}
TOP_LEVEL = ("seed", "fit_images", "trust_pickle", "data_root")
OPTION_GROUP = {f.name: group for group, cls in GROUPS.items() for f in fields(cls)
                if f.name not in ("sets", "mode", "methods", "dir", "logger")}


@dataclass
class Evaluation:
    """A finished :func:`evaluate`: the protocol run and the model it evaluated (``workspace``: the temporary run
    folder of the score and fit files, when :func:`evaluate` was given none; removed with the evaluation)."""

    run: ProtocolRun
    model: nn.Module
    workspace: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    @property
    def records(self) -> list[Record]:
        """One typed record per reported (OOD set, method, tuning)."""
        return list(self.run.result.records)

    def table(self) -> str:
        """The Markdown table that ``evaluate.py`` prints and writes to table.md."""
        return self.run.table

    def to_pandas(self) -> Any:
        """The records as a ``pandas.DataFrame``, one row per record, the columns of results.csv."""
        try:
            import pandas
        except ImportError as err:
            raise UserError("to_pandas() needs pandas: pip install 'odin-pl[pandas]' (or pip install pandas)") from err
        return pandas.DataFrame([record.to_dict() for record in self.records])

    def save(self, folder: str | Path) -> RunFiles:
        """Write the run folder's results (table.md, results.json, results.csv), detectors and figures, as
        ``evaluate.py`` does, into ``folder``; the fits of fitted methods are copied to its ``fits/`` (their
        detectors refer to them there)."""
        folder = Path(folder)
        fits = self.run.fits
        for name, saved in fits.saved.items() if fits is not None else ():
            copy = folder / "fits" / saved.path.name
            if not copy.exists() or not copy.samefile(saved.path):
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(saved.path, copy)
                fits.saved[name] = replace(saved, path=copy)
                self.run.__dict__.pop("meta", None)  # the cached results.json fields name the fit files
        return write_run(self.run, self.model, folder)


def evaluate_target(config: ProtocolConfig, target: EvaluationTarget, ood: Mapping[str, Dataset], *,
                    device: torch.device | str, sources: Mapping[str, str] | None = None,
                    tuning_only: Mapping[str, Dataset] | None = None, skipped: Sequence[str] = (),
                    resolved_config: str = "") -> Evaluation:
    """The protocol of ``config`` on ``target`` and the OOD sets ``ood`` on this process's ``device``; with
    ``resolved_config`` (YAML) process 0 first saves it as the run folder's config.yaml."""
    if resolved_config and world()[0] == 0:
        write_config(config.output_dir, resolved_config)
    run = evaluate_protocol(config, target, ood, device=device, sources=sources, tuning_only=tuning_only,
                            skipped=list(skipped))
    return Evaluation(run, target.model)


def evaluate(model: nn.Module | str | Path, data: LightningDataModule | Dataset | None, ood: Mapping[str, Dataset], *,
             methods: Sequence[str] | str | None = None, protocol: str = "paper", spec: ImageSpec | None = None,
             fit_data: Dataset | None = None, output_dir: str | Path | None = None, device: torch.device | str |
             None = None, tune_on_sets: Mapping[str, Dataset] | None = None, **options: Any) -> Evaluation:
    """Evaluate ``model``'s OOD detection with the protocol of ``evaluate.py``.

    Args:
        model: an eval-mode ``nn.Module`` of logits on normalized images, or a checkpoint path of train.py.
        data: the in-distribution DataModule (its ``test_set`` after ``setup("test")``) or test ``Dataset``; None
            with a checkpoint: the checkpoint's DataModule.
        ood: the OOD test sets by name (e.g. ``datamodules.ood.build_ood_dataset("gaussian", spec, root, 0)``).
        methods: method names (default: MSP and ODIN). protocol: ``paper | transfer | cross | fixed``.
        spec: the image spec, when neither the model nor the DataModule has an ``image_spec``.
        fit_data: the in-distribution training set of the fitted methods when ``data`` is a Dataset.
        output_dir: the run folder of the score and fit files (resumable with ``resume=True``); default: a
            temporary one, kept while the returned :class:`Evaluation` lives.
        device: where to score (default: Fabric's choice of ``accelerator``; under a process group, the current
            CUDA device or the CPU).
        tune_on_sets: sets used only for tuning in transfer mode (``tune_on`` names one).
        options: evaluate.py's options by field name: ``temperatures``, ``epsilons``, ``temperature``,
            ``epsilon``, ``params``, ``grids``, ``n_tune``, ``tune_on``, ``accelerator``, ``precision``,
            ``batch_size``, ``num_workers``, ``resamples``, ``show``, ``resume``, ``num_images`` (recorded only),
            ``seed``, ``fit_images``.
    """
    if protocol not in MODES:
        raise UserError(f"protocol must be one of {', '.join(MODES)}, got {protocol!r}")
    if not isinstance(ood, Mapping) or not ood or not all(isinstance(d, Dataset) for d in ood.values()):
        raise UserError("ood must map OOD set names to Datasets (e.g. {'gaussian': build_ood_dataset('gaussian', "
                        "spec, data_root, seed)} of datamodules.ood)")
    workspace = tempfile.TemporaryDirectory(prefix="odin_pl_") if output_dir is None else None
    out = Path(workspace.name if workspace is not None else output_dir)
    datamodule = data if isinstance(data, LightningDataModule) or data is None else _DatasetData(data, fit_data)
    config = _config(model, datamodule, out, methods, protocol, options)
    config.check_output_dir()
    if dist.is_available() and dist.is_initialized():
        device = device or (torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available()
                            and config.runtime.accelerator != "cpu" else torch.device("cpu"))
    elif device is None:
        device = start_processes(config.runtime, may_start_processes=False).device
    target = load_target(config) if config.ckpt is not None else _module_target(model, datamodule, spec, config)
    evaluation = evaluate_target(config, target, ood, device=device, tuning_only=tune_on_sets)
    return replace(evaluation, workspace=workspace)


def _config(model: nn.Module | str | Path, datamodule: LightningDataModule | None, out: Path,
            methods: Sequence[str] | str | None, protocol: str, options: Mapping[str, Any]) -> ProtocolConfig:
    """The ProtocolConfig of evaluate()'s arguments (every group checks itself as on the command line)."""
    unknown = sorted(set(options) - set(OPTION_GROUP) - set(TOP_LEVEL))
    if unknown:
        raise UserError(f"evaluate() has no option {', '.join(unknown)}; the options are "
                        f"{', '.join(sorted([*OPTION_GROUP, *TOP_LEVEL]))}")
    grouped: dict[str, dict[str, Any]] = {group: {} for group in GROUPS}
    for name, value in options.items():
        if name in OPTION_GROUP:
            grouped[OPTION_GROUP[name]][name] = value
    grouped["tuning"].update(mode=protocol, methods=methods)
    grouped["output"].update(dir=str(out), logger=False)
    groups = {name: GROUPS[name](**values) for name, values in grouped.items()}
    top = {name: options[name] for name in TOP_LEVEL if name in options}
    if isinstance(model, (str, Path)):
        return ProtocolConfig(ckpt=str(model), data=datamodule, **top, **groups)
    if not isinstance(model, nn.Module) or datamodule is None:
        raise UserError(f"evaluate() takes an nn.Module and its in-distribution data, or a checkpoint path, got "
                        f"{type(model).__name__} and {type(datamodule).__name__}")
    save_atomically(model.state_dict(), out / WEIGHTS_FILE)  # the same bytes from every process of a group
    label = getattr(getattr(model, "hparams", {}), "get", lambda _: None)("backbone") or type(model).__name__
    return ProtocolConfig(model=label, weights=str(out / WEIGHTS_FILE), data=datamodule, **top, **groups)


def _module_target(model: nn.Module, datamodule: LightningDataModule, spec: ImageSpec | None,
                   config: ProtocolConfig) -> EvaluationTarget:
    """An in-memory model's target: its image spec from the model, else the DataModule, else ``spec``."""
    spec = getattr(model, "image_spec", None) or getattr(datamodule, "image_spec", None) or spec
    if not isinstance(spec, ImageSpec):
        raise UserError("the image spec is unknown: give evaluate(..., spec=ImageSpec(size, channels, mean, std, "
                        "class_names)) when neither the model nor the data has an `image_spec`")
    probe = EvaluationTarget(model, datamodule, config.weights_file, spec, spec.num_classes, config.model)
    parameter = next(model.parameters())
    with torch.no_grad():
        logits = model(probe.test_set[0][0][None].to(parameter))
    if logits.ndim != 2 or (spec.num_classes and logits.shape[1] != spec.num_classes):
        raise UserError(f"the model gives logits of shape {tuple(logits.shape)} on one image; the spec has "
                        f"{spec.num_classes} classes: give a classifier of (batch, classes) logits")
    return replace(probe, num_classes=logits.shape[1])


class _DatasetData(LightningDataModule):  # private: jsonargparse lists no "_" class among --data's choices
    """An in-distribution test ``Dataset`` (and, for the fitted methods, a training one) as a DataModule."""

    def __init__(self, test_set: Dataset, train_set: Dataset | None = None) -> None:
        super().__init__()
        self.test_set, self.train_set = test_set, train_set

    def load_split(self, train: bool, augment: bool) -> Dataset:
        if not train:
            return self.test_set
        if self.train_set is None:
            raise UserError("the fitted methods fit on in-distribution training images: give "
                            "evaluate(..., fit_data=TRAINING_DATASET) or a DataModule with a training split")
        return self.train_set
