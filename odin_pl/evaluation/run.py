"""One evaluation run: load what to evaluate, run the protocol with saved (resumable) scores, describe the result.

``load_target(source)`` gives the eval-mode model and its in-distribution test set; ``evaluate_protocol`` runs
:func:`odin_pl.protocol.run.run_protocol` on it and the OOD sets with a
:class:`~odin_pl.evaluation.score_store.ScoreStore`
(scores saved as they are computed; reused on ``--output.resume``) and returns a :class:`ProtocolRun`, from which
the reports, detectors, analyses and logs are made.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from lightning.pytorch import LightningDataModule
from torch.utils.data import Dataset, Subset

from odin_pl.analyses import AnalysisContext
from odin_pl.protocol.bootstrap import LEVEL, bootstrap_seed, with_intervals
from odin_pl.training.checkpoint import build_datamodule, load_model, read_checkpoint
from odin_pl.training.convert import load_foreign_model
from odin_pl.distributed import world
from odin_pl.evaluation.environment import describe_environment
from odin_pl.evaluation.options import ModelSource, ProtocolConfig
from odin_pl.fingerprint import FileHashes, dataset_sha256, file_sha256
from odin_pl.methods.features import Fits
from odin_pl.protocol.fits import RunFits, heldout_set, prepare_fits, training_set
from odin_pl.protocol.openood import ID_TEST, ID_VAL, OpenOODResult, OpenOODSets, openood_intervals, run_openood, \
    test_accuracy
from odin_pl.methods import Setting, method_with_role
from odin_pl.training.module import ImageClassifier
from odin_pl.protocol.plan import MethodGrid, ProtocolPlan
from odin_pl.protocol.records import ProtocolResult
from odin_pl.protocol.run import IN_DISTRIBUTION, ModelScorer, run_protocol
from odin_pl.protocol.tuning import Selection, SetSplit, split_indices, split_seed
from odin_pl.report.openood import openood_tables
from odin_pl.report.tables import results_tables
from odin_pl.evaluation.score_store import Reuse, ScoreStore
from odin_pl.spec import ImageSpec
from odin_pl.version import __version__
from odin_pl.errors import NonFiniteScoresError, UserError

#: The SHA-256 of the run's image files by their stat facts (``odin_pl.fingerprint.FileHashes``), in the output
#: folder: a resumed run does not read an unchanged folder again.
IMAGE_HASHES = ".image_hashes.json"


@dataclass
class EvaluationTarget:
    """The eval-mode model (any ``nn.Module`` of logits), its in-distribution DataModule, the file its weights came
    from, its image spec, class count and the backbone's name (for titles)."""

    model: nn.Module
    datamodule: LightningDataModule
    weights_file: Path
    spec: ImageSpec
    num_classes: int
    backbone: str

    @classmethod
    def of_classifier(cls, model: ImageClassifier, datamodule: LightningDataModule, weights_file: Path
                      ) -> "EvaluationTarget":
        return cls(model, datamodule, weights_file, model.image_spec, model.hparams.num_classes,
                   model.hparams.backbone)

    @property
    def test_set(self) -> Dataset:
        """The in-distribution test set (the DataModule is set up on first use)."""
        if getattr(self.datamodule, "test_set", None) is None:
            self.datamodule.setup("test")
        return self.datamodule.test_set


def load_target(source: ModelSource) -> EvaluationTarget:
    """The model and DataModule of a checkpoint (``source.data`` replaces the checkpoint's DataModule), or of a
    foreign model's weights and ``source.data``."""
    if source.ckpt is not None:
        checkpoint = read_checkpoint(source.ckpt, source.trust_pickle)
        datamodule = source.data or build_datamodule(checkpoint, source.ckpt, source.trust_pickle,
                                                     data_root=source.data_root)
        return EvaluationTarget.of_classifier(load_model(checkpoint, source.ckpt), datamodule, Path(source.ckpt))
    model = load_foreign_model(source.model, source.weights, source.data.image_spec, source.trust_pickle)
    return EvaluationTarget.of_classifier(model, source.data, Path(source.weights))


@dataclass
class ProtocolRun:
    """A finished protocol run: its configuration, what was evaluated, and the protocol's result; the files and
    logs are made from the run and its result alone (:attr:`meta`, :attr:`table`, :meth:`detector_settings`)."""

    config: ProtocolConfig
    spec: ImageSpec
    backbone: str
    weights_sha256: str
    result: ProtocolResult
    skipped_ood_sets: list[str] = field(default_factory=list)
    reused_score_files: list[str] = field(default_factory=list)
    processes: int = 1
    threads_per_process: int = 1
    environment: dict[str, Any] = field(default_factory=dict)
    fits: RunFits | None = None

    @property
    def mode(self) -> str:
        return self.result.plan.mode

    @property
    def title(self) -> str:
        """The tables' title: the data set, the network and the protocol (the paper's: its mode)."""
        protocol = (f"OpenOOD v1.5 protocol, {self.result.benchmark}" if isinstance(self.result, OpenOODResult)
                    else f"{self.mode} mode")
        return f"{self.spec.dataset or 'in-distribution'}, {self.backbone} ({protocol})"

    @cached_property
    def table(self) -> str:
        """Table 2 of the paper (baseline / ODIN; and, in cross mode, tables 10/11) in Markdown, or with other
        methods, one row per method and a column per OOD set; for OpenOOD's protocol, followed by its tables."""
        table = results_tables(self.result, self.title, self.mode == "cross", intervals=self.config.bootstrap.show)
        if isinstance(self.result, OpenOODResult):
            table += "\n\n" + openood_tables(self.result, intervals=self.config.bootstrap.show)
        return table

    def detector_settings(self) -> dict[str, tuple[str, Setting, str | None]]:
        """File stem -> (method, setting, tuning set) of each detector the run gives: ``<set>.<method>`` per tuning
        of a tuned method, ``fixed.<method>`` for a method used with fixed parameters."""
        detectors = {}
        for grid in self.result.methods:
            selections = self.result.selections.get(grid.name, {})
            for tuned_on, selection in selections.items():
                detectors[f"{tuned_on}.{grid.name}"] = (grid.name, selection.setting, tuned_on)
            if not selections:
                setting = grid.fixed if self.mode == "fixed" else grid.settings[0]
                detectors[f"fixed.{grid.name}"] = (grid.name, setting, None)
        return detectors

    @cached_property
    def meta(self) -> dict[str, Any]:
        """What results.json says besides the records: ``grid`` (by parameter, plural names) and ``tuning`` are
        the paper method's, as before other methods; ``grids`` and ``selections`` hold every method's."""
        plan, bootstrap, selections = self.result.plan, self.config.bootstrap, self.result.selections
        paper = plan.method(method_with_role("paper"))
        return {"checkpoint": str(self.config.weights_file), "version": __version__, "mode": plan.mode,
                "tune_on": plan.tune_on, "seed": plan.seed, "image_spec": self.spec.to_dict(),
                "skipped_ood_sets": self.skipped_ood_sets, "notes": self.result.notes,
                "methods": self.result.method_names,
                "grid": {f"{name}s": values for name, values in paper.axes().items()} if paper else {},
                "tuning": {name: {**s.params, **_tuning_fields(s, auroc=False)}
                           for name, s in selections.get(paper.name, {}).items()} if paper else {},
                "grids": {m.name: [list(setting) for setting in m.settings] for m in plan.methods},
                "selections": {method: {name: {"params": s.params, **_tuning_fields(s)} for name, s in by_set.items()}
                               for method, by_set in selections.items()},
                "splits": {name: split.to_dict() for name, split in self.result.splits.items()},
                "fits": {name: saved.describe() for name, saved in self.fits.saved.items()} if self.fits else {},
                "runtime": {"processes": self.processes, "threads_per_process": self.threads_per_process,
                            "precision": self.config.runtime.precision},
                "bootstrap": {"resamples": bootstrap.resamples, "level": LEVEL, "method": "paired percentile",
                              "set_seeds": {name: bootstrap_seed(plan.seed, name)
                                            for name in self.result.ood_test_scores}} if bootstrap.resamples else None,
                "environment": self.environment, **self._openood_meta()}

    def _openood_meta(self) -> dict[str, Any]:
        """OpenOOD's part of results.json: the benchmark, groups, ID accuracy, group means and skipped sets."""
        result = self.result
        if not isinstance(result, OpenOODResult):
            return {"protocol": "odin"}
        return {"protocol": "openood", "openood": {
            "benchmark": result.benchmark, "groups": result.groups, "accuracy": result.accuracy,
            "skipped": result.skipped, "group_records": [g.to_dict() for g in result.group_records],
            "search": "first maximum of AUROC on ID val + OOD val, the first key of each sweep fastest"}}


def _tuning_fields(selection: Selection, auroc: bool = True) -> dict[str, Any]:
    """A selection's tuning numbers as results.json gives them (``tuning`` has no AUROC, as before other methods)."""
    return {"tuning_fpr_at_95_tpr": selection.tuning_fpr,
            **({"tuning_auroc": selection.tuning_auroc} if auroc else {}),
            "fpr_at_95_tpr_grid": selection.fpr_grid, "grid_edge": selection.edge_note}


def score_store(config: ProtocolConfig, target: EvaluationTarget, plan: ProtocolPlan,
                ood_datasets: Mapping[str, Dataset], sources: Mapping[str, str], tuning_only: Mapping[str, Dataset],
                weights_sha256: str, fits: RunFits | None, hashes: FileHashes, reuse: Reuse,
                folder: Path | None = None, in_sets: Mapping[str, Dataset] | None = None) -> ScoreStore:
    """The run's score files: fingerprinted by the weights, image spec, precision, seed, tuning size, image count,
    (with feature methods) the fits' files and each set's source, size and images' SHA-256 (files hashed through
    ``hashes``); scores are checked against each method's range. Process 0 alone reads and writes score files, so
    the others hash nothing."""
    context = {"weights_sha256": weights_sha256, "image_spec": target.spec.to_dict(),
               "float64": config.runtime.precision == "64-true", "seed": plan.seed,
               "n_tune": plan.n_tune, "num_ood_images": config.ood.num_images}
    if fits is not None:
        context["fits_sha256"] = fits.sha256
    sets = {**(in_sets if in_sets is not None else {IN_DISTRIBUTION: target.test_set}), **ood_datasets,
            **tuning_only}
    num_classes = target.num_classes
    ranges = {grid.name: grid.method.score_range(num_classes) for grid in plan.methods}
    facts = {name: {"source": sources.get(name, target.spec.dataset), "n": len(dataset),
                    "images_sha256": images_sha256(dataset, hashes)}
             for name, dataset in sets.items()} if world()[0] == 0 else {}
    return ScoreStore(folder or config.output_dir / "scores", {**context, "protocol": plan.mode}
                      if plan.mode == "openood" else context, facts, ranges, reuse=reuse)


def images_sha256(dataset: Dataset, hashes: FileHashes) -> str | None:
    """:func:`~odin_pl.fingerprint.dataset_sha256` of a set, or None for one it cannot read (whose saved scores
    are then never reused)."""
    try:
        return dataset_sha256(dataset, hashes)
    except ValueError:
        return None


def evaluate_protocol(config: ProtocolConfig, target: EvaluationTarget, ood_datasets: Mapping[str, Dataset], *,
                      device: torch.device | str = "cpu", sources: Mapping[str, str] | None = None,
                      tuning_only: Mapping[str, Dataset] | None = None,
                      skipped: list[str] | None = None, saved_scores_only: bool = False) -> ProtocolRun:
    """Run the protocol of ``config`` on the target and the OOD sets on ``device`` (this process's: see
    ``odin_pl.evaluation.runtime``); in a process group every process scores its shard and only process 0 reads and
    saves score files.

    ``saved_scores_only``: take every score from the run folder's saved files (resume), and fail with a message
    when one is missing instead of scoring (for work on a finished run, such as its analyses).
    Process 0 adds the bootstrap intervals of ``config.bootstrap`` to the records.
    """
    runtime = config.runtime
    target.model.to(device=device, dtype=runtime.dtype)
    rank = world()[0]
    weights_sha256 = file_sha256(target.weights_file)
    plan = config.tuning.plan(config.seed)
    hashes = FileHashes(config.output_dir / IMAGE_HASHES)
    fits = run_fits(config, target, plan, weights_sha256, device, hashes, saved_only=saved_scores_only)
    if fits is not None:
        plan = replace(plan, methods=tuple(fits.methods))
    reuse = "required" if saved_scores_only else "matching" if config.output.resume else "never"
    store = score_store(config, target, plan, ood_datasets, sources or {}, tuning_only or {}, weights_sha256, fits,
                        hashes, reuse)
    if rank == 0:
        hashes.save()
    scorer = ModelScorer(target.model, target.spec.std, runtime.batch_size, runtime.num_workers, device,
                         fits.fits if fits is not None else None, progress=rank == 0, seed=plan.seed)
    try:
        result = run_protocol(plan, target.test_set, ood_datasets, scorer, store, tuning_only=tuning_only)
    except NonFiniteScoresError as err:
        raise NonFiniteScoresError(f"{target.weights_file}: {err}") from err
    return _protocol_run(config, target, weights_sha256, result, fits, list(skipped or []), store.reused, device)


def _protocol_run(config: ProtocolConfig, target: EvaluationTarget, weights_sha256: str, result: ProtocolResult,
                  fits: RunFits | None, skipped: list[str], reused: list[str], device: torch.device | str
                  ) -> ProtocolRun:
    """The :class:`ProtocolRun` of a protocol's result: the fits' notes first and, on process 0, the bootstrap
    intervals of ``config.bootstrap`` (for OpenOOD's protocol, of its metrics and near/far means too)."""
    if fits is not None:
        result.notes[:0] = fits.notes
    if world()[0] == 0 and config.bootstrap.resamples:
        result.records = with_intervals(result, config.bootstrap.resamples)
        if isinstance(result, OpenOODResult):
            result = openood_intervals(result, config.bootstrap.resamples)
    return ProtocolRun(config, target.spec, target.backbone, weights_sha256, result, skipped, reused,
                       processes=world()[1], threads_per_process=torch.get_num_threads(),
                       environment=describe_environment(device), fits=fits)


def run_fits(config: ProtocolConfig, target: EvaluationTarget, plan: ProtocolPlan, weights_sha256: str,
             device: torch.device | str, hashes: FileHashes, saved_only: bool = False) -> RunFits | None:
    """The fits of the plan's fitted methods (None without any) on the DataModule's training split (a seeded
    ``--fit_images`` subset, its files hashed through ``hashes``) or, for those with ``fit_split = "heldout"``, on
    its held-out split (``heldout_set``: the validation split, else the in-distribution tuning split of the
    protocol), saved in ``<output_dir>/fits/``; with ``--output.resume`` (or ``saved_only``, which fails instead of
    fitting) a saved fit that matches is reused."""
    methods = plan.methods
    fitted = [grid.method for grid in methods if grid.method.needs_fit]
    if not fitted:
        return None
    train = training_set(target.datamodule, config.fit_images, split_seed(config.seed, "fit")) \
        if any(method.fit_split == "train" for method in fitted) else None
    heldout = None
    if any(method.fit_split == "heldout" for method in fitted):
        in_split = SetSplit.make(len(target.test_set), split_seed(plan.seed, "in"), plan.n_tune)
        heldout = heldout_set(target.datamodule, Subset(target.test_set, in_split.tune.tolist()))
    return prepare_fits(target.model, list(methods), train, folder=config.output_dir / "fits",
                        weights_sha256=weights_sha256, hashes=hashes, reuse=config.output.resume or saved_only,
                        fit_missing=not saved_only, batch_size=config.runtime.batch_size,
                        num_workers=config.runtime.num_workers, device=device, progress=world()[0] == 0,
                        heldout=heldout, seed=plan.seed)


def analysis_context(run: ProtocolRun, target: EvaluationTarget, ood_datasets: Mapping[str, Dataset]
                     ) -> AnalysisContext:
    """What the paper's analyses of a run need (its model, sets, result and options)."""
    config = run.config
    return AnalysisContext(
        model=target.model, input_mean=run.spec.mean, input_std=run.spec.std, in_dataset=target.test_set,
        ood_datasets=ood_datasets, result=run.result,
        output_dir=config.output_dir / "analyses", seed=config.seed, batch_size=config.runtime.batch_size,
        device=next(target.model.parameters()).device, num_images=config.analyses.images,
        class_names=run.spec.class_names, fits=run.fits.fits if run.fits is not None else None)


def evaluate_openood(config: ProtocolConfig, target: EvaluationTarget, sets: OpenOODSets, output_dir: Path, *,
                     device: torch.device | str = "cpu", saved_scores_only: bool = False) -> ProtocolRun:
    """OpenOOD v1.5's protocol (``odin_pl.protocol.openood``) of ``config`` on the target and the benchmark's
    ``sets``, its score files and fits in ``output_dir`` (``scores/``, ``fits/``: resumable as the paper's);
    process 0 adds the bootstrap intervals (this package's metrics and OpenOOD's, the group means included)."""
    runtime = config.runtime
    target.model.to(device=device, dtype=runtime.dtype)
    rank = world()[0]
    weights_sha256 = file_sha256(target.weights_file)
    plan = config.tuning.openood_plan(config.seed)
    hashes = FileHashes(output_dir / IMAGE_HASHES)
    fits = openood_fits(config, target, sets, plan.methods, output_dir / "fits", weights_sha256, device, hashes,
                        saved_only=saved_scores_only)
    if fits is not None:
        plan = replace(plan, methods=tuple(fits.methods))
    reuse = "required" if saved_scores_only else "matching" if config.output.resume else "never"
    store = score_store(config, target, plan, {sets.ood_val_name: sets.ood_val, **sets.test_sets}, sets.sources, {},
                        weights_sha256, fits, hashes, reuse, folder=output_dir / "scores",
                        in_sets={ID_VAL: sets.id_val, ID_TEST: sets.id_test})
    if rank == 0:
        hashes.save()
    scorer = ModelScorer(target.model, target.spec.std, runtime.batch_size, runtime.num_workers, device,
                         fits.fits if fits is not None else None, progress=rank == 0, seed=config.seed)
    accuracy = test_accuracy(target.model, sets.id_test, batch_size=runtime.batch_size,
                             num_workers=runtime.num_workers, device=device)
    try:
        result = run_openood(plan, sets, scorer, store, accuracy)
    except NonFiniteScoresError as err:
        raise NonFiniteScoresError(f"{target.weights_file}: {err}") from err
    return _protocol_run(config, target, weights_sha256, result, fits, list(sets.skipped), store.reused, device)


def openood_fits(config: ProtocolConfig, target: EvaluationTarget, sets: OpenOODSets, methods: Sequence[MethodGrid],
                 folder: Path, weights_sha256: str, device: torch.device | str, hashes: FileHashes,
                 saved_only: bool = False) -> RunFits | None:
    """The fits of the run's fitted methods on the splits OpenOOD fits them on (``Method.openood_fit_split``: the
    benchmark's ID train list, a seeded ``--fit_images`` subset of it, or its ID val list), in ``folder``."""
    fitted = [grid for grid in methods if grid.method.needs_fit]
    if not fitted:
        return None
    train = sets.id_train
    if train is not None and config.fit_images is not None:
        if config.fit_images > len(train):
            raise UserError(f"--fit_images {config.fit_images} is more than the {len(train)} ID training images")
        train = Subset(train, split_indices(len(train), config.fit_images, split_seed(config.seed, "fit"))[0].tolist())
    parts = []
    for split, dataset in (("train", train), ("val", sets.id_val)):
        group = [grid for grid in fitted if grid.method.openood_fit_split == split]
        if not group:
            continue
        if dataset is None:
            raise UserError(f"{', '.join(g.name for g in group)} fit on OpenOOD's ID training list, which this run "
                            "has not loaded (build the suite with train=True)")
        parts.append(prepare_fits(target.model, group, dataset, folder=folder, weights_sha256=weights_sha256,
                                  hashes=hashes, reuse=config.output.resume or saved_only, fit_missing=not saved_only,
                                  batch_size=config.runtime.batch_size, num_workers=config.runtime.num_workers,
                                  device=device, progress=world()[0] == 0, heldout=sets.id_val, seed=config.seed))
    grids = {grid.name: grid for part in parts for grid in part.methods}
    return RunFits(Fits({name: t for part in parts for name, t in part.fits.tensors.items()}),
                   {name: saved for part in parts for name, saved in part.saved.items()},
                   [grids.get(grid.name, grid) for grid in methods], [n for part in parts for n in part.notes],
                   [name for part in parts for name in part.reused])
