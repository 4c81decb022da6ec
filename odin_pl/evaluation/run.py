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
from typing import Any, Mapping

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import Dataset, Subset

from odin_pl import __version__
from odin_pl.analyses import AnalysisContext
from odin_pl.protocol.bootstrap import LEVEL, bootstrap_seed, with_intervals
from odin_pl.training.checkpoint import build_datamodule, load_model, read_checkpoint
from odin_pl.training.convert import load_foreign_model
from odin_pl.distributed import world
from odin_pl.evaluation.environment import describe_environment
from odin_pl.evaluation.options import ModelSource, ProtocolConfig
from odin_pl.fingerprint import FileHashes, dataset_sha256, file_sha256
from odin_pl.protocol.fits import RunFits, heldout_set, prepare_fits, training_set
from odin_pl.methods import Setting, method_with_role
from odin_pl.training.module import ImageClassifier
from odin_pl.protocol.plan import ProtocolPlan
from odin_pl.protocol.records import ProtocolResult
from odin_pl.protocol.run import IN_DISTRIBUTION, ModelScorer, run_protocol
from odin_pl.protocol.tuning import Selection, SetSplit, split_seed
from odin_pl.report.tables import results_tables
from odin_pl.evaluation.score_store import Reuse, ScoreStore
from odin_pl.spec import ImageSpec
from odin_pl.errors import NonFiniteScoresError

#: The SHA-256 of the run's image files by their stat facts (``odin_pl.fingerprint.FileHashes``), in the output
#: folder: a resumed run does not read an unchanged folder again.
IMAGE_HASHES = ".image_hashes.json"


@dataclass
class EvaluationTarget:
    """The eval-mode model, its in-distribution DataModule and the file its weights came from."""

    model: ImageClassifier
    datamodule: LightningDataModule
    weights_file: Path

    @property
    def spec(self) -> ImageSpec:
        return self.model.image_spec

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
        return EvaluationTarget(load_model(checkpoint, source.ckpt), datamodule, Path(source.ckpt))
    model = load_foreign_model(source.model, source.weights, source.data.image_spec, source.trust_pickle)
    return EvaluationTarget(model, source.data, Path(source.weights))


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
        return f"{self.spec.dataset or 'in-distribution'}, {self.backbone} ({self.mode} mode)"

    @cached_property
    def table(self) -> str:
        """Table 2 of the paper (baseline / ODIN; and, in cross mode, tables 10/11) in Markdown, or with other
        methods, one row per method and a column per OOD set."""
        return results_tables(self.result, self.title, self.mode == "cross", intervals=self.config.bootstrap.show)

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
                "environment": self.environment}


def _tuning_fields(selection: Selection, auroc: bool = True) -> dict[str, Any]:
    """A selection's tuning numbers as results.json gives them (``tuning`` has no AUROC, as before other methods)."""
    return {"tuning_fpr_at_95_tpr": selection.tuning_fpr,
            **({"tuning_auroc": selection.tuning_auroc} if auroc else {}),
            "fpr_at_95_tpr_grid": selection.fpr_grid, "grid_edge": selection.edge_note}


def score_store(config: ProtocolConfig, target: EvaluationTarget, plan: ProtocolPlan,
                ood_datasets: Mapping[str, Dataset], sources: Mapping[str, str], tuning_only: Mapping[str, Dataset],
                weights_sha256: str, fits: RunFits | None, hashes: FileHashes, reuse: Reuse) -> ScoreStore:
    """The run's score files: fingerprinted by the weights, image spec, precision, seed, tuning size, image count,
    (with feature methods) the fits' files and each set's source, size and images' SHA-256 (files hashed through
    ``hashes``); scores are checked against each method's range. Process 0 alone reads and writes score files, so
    the others hash nothing."""
    context = {"weights_sha256": weights_sha256, "image_spec": target.spec.to_dict(),
               "float64": config.runtime.precision == "64-true", "seed": plan.seed,
               "n_tune": plan.n_tune, "num_ood_images": config.ood.num_images}
    if fits is not None:
        context["fits_sha256"] = fits.sha256
    sets = {IN_DISTRIBUTION: target.test_set, **ood_datasets, **tuning_only}
    num_classes = target.model.hparams.num_classes
    ranges = {grid.name: grid.method.score_range(num_classes) for grid in plan.methods}
    facts = {name: {"source": sources.get(name, target.spec.dataset), "n": len(dataset),
                    "images_sha256": images_sha256(dataset, hashes)}
             for name, dataset in sets.items()} if world()[0] == 0 else {}
    return ScoreStore(config.output_dir / "scores", context, facts, ranges, reuse=reuse)


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
    if fits is not None:
        result.notes[:0] = fits.notes
    if rank == 0 and config.bootstrap.resamples:
        result.records = with_intervals(result, config.bootstrap.resamples)
    return ProtocolRun(config, target.spec, target.model.hparams.backbone, weights_sha256, result,
                       list(skipped or []), store.reused, processes=world()[1],
                       threads_per_process=torch.get_num_threads(), environment=describe_environment(device),
                       fits=fits)


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
