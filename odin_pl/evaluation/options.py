"""The typed option groups of an evaluation; ``evaluate.py`` builds its command line and config files from them.

Each group checks itself when it is built, so a bad combination fails before any model is loaded:

* :class:`OODOptions`      - which OOD sets, how many images of each, download;
* :class:`TuningOptions`   - how (T, epsilon) is chosen: ``paper | transfer | cross | fixed`` and the grid, or
  OpenOOD v1.5's protocol (``openood``; ``paper,openood``: both on one model);
* :class:`OpenOODOptions`  - OpenOOD's benchmark of mode ``openood`` (its lists and sets under the data root);
* :class:`RuntimeOptions`  - where and how scoring runs (accelerator, processes, nodes, precision, batches);
* :class:`OutputOptions`   - where results go, resume, logging on or off;
* :class:`~odin_pl.tracking.loggers.LoggerOptions` - the logger (``--logger.*``: the ``logger:`` group of
``configs/logger/``,
  which train.py reads too);
* :class:`AnalysesOptions` - the paper's analyses to run after the protocol;
* :class:`BootstrapOptions` - bootstrap intervals of the metrics;
* :class:`ModelSource`     - what to evaluate: a checkpoint, or a model + weights + DataModule;
* :class:`ProtocolConfig`  - a protocol run (a ModelSource and the groups above);
* :class:`PredictConfig`   - scoring images with a saved detector (a ModelSource, the images, the detector).

List options take a list or comma-separated text (``gaussian,uniform``), on the command line and in YAML alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import torch
from lightning.pytorch import LightningDataModule

from odin_pl.analyses import check_analyses, parse_analyses
from odin_pl.protocol.bootstrap import DEFAULT_RESAMPLES
from odin_pl.tracking.loggers import LoggerOptions
from odin_pl.methods import create_method, default_methods, list_methods, method_with_role
from odin_pl.protocol.openood import OPENOOD, openood_plan
from odin_pl.protocol.plan import MODES, MethodGrid, ProtocolPlan
from odin_pl.protocol.tuning import PAPER_TUNING_SIZE, parse_floats
from odin_pl.errors import UserError

PRECISIONS = ("32-true", "64-true")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
STRATEGIES = ("auto", "ddp")
#: ``--tuning.mode``: one of the paper's modes, OpenOOD's protocol, or one of the paper's modes with OpenOOD's.
TuningModes = Literal["paper", "transfer", "cross", "fixed", "openood", "paper,openood", "transfer,openood",
                      "cross,openood", "fixed,openood"]
SAVED_CONFIG = "config.yaml"  # evaluate.py's resolved configuration in the output folder
#: What an output folder holds once a protocol run scored in it (a later run there would replace them); a run
#: that stopped before its first score leaves config.yaml alone, which a later run replaces without asking.
RUN_FILES = ("results.json", "scores")
NOISE_TUNING_SET = "noise"  # transfer mode's synthetic tuning set: Gaussian + Uniform images, no OOD data needed


def comma_list(value: str | Sequence[str] | None) -> list[str]:
    """'a, b' or ['a', 'b'] -> ['a', 'b'] (empty items dropped); None -> []."""
    items = value.split(",") if isinstance(value, str) else list(value or [])
    return [str(item).strip() for item in items if str(item).strip()]


@dataclass
class OODOptions:
    """The OOD suite.

    Args:
        sets: OOD set names or image folders (default: the in-distribution data set's suite of the paper).
        num_images: use a seeded subset of this many images of each OOD set (default: all).
        download: download missing sets (the paper's released archives; md5-checked).
    """

    sets: list[str] | str | None = None
    num_images: int | None = None
    download: bool = False

    def __post_init__(self) -> None:
        self.sets = comma_list(self.sets)
        if self.num_images is not None and self.num_images < 2:
            raise UserError(f"--ood.num_images must be at least 2 (a tuning and a test image), got {self.num_images}")


@dataclass
class TuningOptions:
    """Which methods, and how their parameters are chosen (paper, section 4.4 and appendix H).

    Once built, the options hold the methods, their ``params`` and ``grids`` and the mode: the paper method's
    shorthands (``temperatures``, ``epsilons``, ``temperature``, ``epsilon``) are turned into its grid and
    parameters, and each method's grid is made and checked once (:attr:`method_grids`).

    Args:
        mode: ``paper``: tune on each OOD set's held-out split; ``transfer``: tune once on ``tune_on`` and report
            every set with it; ``cross``: every tuning on every set (the paper's tables 10 and 11); ``fixed``: use
            fixed parameters (ODIN's ``temperature`` and ``epsilon``; each other method's ``params``, else the first
            of its grid in its tie order); ``openood``: OpenOOD v1.5's protocol on ``--openood.benchmark`` (each
            method's OpenOOD sweep searched on ID val + OOD val by AUROC; results in ``openood/`` when combined).
            One of the paper's modes and ``openood`` together (``paper,openood``) run both on the model.
        tune_on: the set to tune on in ``transfer`` mode: an evaluated OOD set, or ``noise`` (500 Gaussian + 500
            Uniform images drawn apart from the noise test sets).
        methods: detection methods by name (27 are registered; the README's methods table lists them; default:
            the baseline, MSP, and the paper's method, ODIN).
        params: fixed parameter values, ``method.name=value`` (e.g. ``energy.temperature=1``): in fixed mode the
            values used, in the other modes the one value of that parameter's grid.
        grids: per method, per parameter, the grid's values (a YAML mapping of lists, e.g. ``{energy:
            {temperature: [1, 10]}}``).
        temperatures: shorthand for ODIN's grid of T (default: 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000).
        epsilons: shorthand for ODIN's grid of epsilon (default: 21 values from 0 to 0.004).
        n_tune: tuning images per set (the paper: 1000; half of a set smaller than twice this).
        temperature: shorthand for ODIN's T in ``fixed`` mode.
        epsilon: shorthand for ODIN's epsilon in ``fixed`` mode.
    """

    mode: TuningModes = "paper"
    tune_on: str | None = None
    methods: list[str] | str | None = None
    params: list[str] | str | None = None
    grids: dict[str, dict[str, list[float]]] | None = None
    temperatures: list[float] | str | None = None
    epsilons: list[float] | str | None = None
    n_tune: int = PAPER_TUNING_SIZE
    temperature: float | None = None
    epsilon: float | None = None

    def __post_init__(self) -> None:
        self.methods = list(dict.fromkeys(default_methods() if self.methods is None else comma_list(self.methods)))
        unknown = [m for m in self.methods if m not in list_methods()]
        if unknown or not self.methods:
            raise UserError(f"--tuning.methods: unknown or no method ({', '.join(unknown) or 'none given'}); the "
                            f"registered methods are {', '.join(list_methods())}")
        modes = self.mode.split(",")
        if any(m not in MODES for m in modes) or len([m for m in modes if m != OPENOOD]) > 1:
            raise UserError(f"--tuning.mode must be one of {', '.join(MODES)}, or one of the paper's modes and "
                            f"{OPENOOD} (e.g. paper,{OPENOOD}); got {self.mode!r}")
        if self.odin_mode is None and (self.grids or self.params or self.temperatures or self.epsilons):
            raise UserError("--tuning.mode openood searches each method's OpenOOD sweep: --tuning.grids, --tuning."
                            "params and ODIN's grid shorthands belong to the paper's modes (add one, e.g. paper,"
                            "openood, or drop them)")
        self.params = comma_list(self.params)
        self.grids = {m: {name: list(values) for name, values in grid.items()}
                      for m, grid in (self.grids or {}).items()}
        self._expand_paper_shorthands()
        unknown = sorted(set(self.grids) - set(self.methods))
        if unknown:
            raise UserError(f"--tuning.grids has {', '.join(unknown)}, not among --tuning.methods "
                            f"({', '.join(self.methods)}): add them there or drop their grids")
        if (self.odin_mode == "transfer") != (self.tune_on is not None):
            raise UserError("--tuning.tune_on SET goes with --tuning.mode transfer (and only with it)")
        if self.n_tune < 1:
            raise UserError(f"--tuning.n_tune must be positive, got {self.n_tune}")
        self._method_grids = tuple(self._make_grids())
        self._openood_plan = openood_plan(self.methods) if self.openood else None

    @property
    def odin_mode(self) -> str | None:
        """The paper's mode of the run (paper, transfer, cross or fixed), or None for OpenOOD's protocol alone."""
        return next((m for m in self.mode.split(",") if m != OPENOOD), None)

    @property
    def openood(self) -> bool:
        """Whether the run includes OpenOOD v1.5's protocol."""
        return OPENOOD in self.mode.split(",")

    def _expand_paper_shorthands(self) -> None:
        """``temperatures`` / ``epsilons`` -> the paper method's grid, ``temperature`` / ``epsilon`` -> its fixed
        parameters (nothing when the run does not evaluate it); the shorthand fields are None afterwards."""
        paper = method_with_role("paper")
        grid = {param: list(parse_floats(values, f"--tuning.{option}")) for param, option, values in
                (("temperature", "temperatures", self.temperatures), ("epsilon", "epsilons", self.epsilons))
                if values is not None}
        fixed = {param: value for param, value in (("temperature", self.temperature), ("epsilon", self.epsilon))
                 if value is not None}
        self.temperatures = self.epsilons = self.temperature = self.epsilon = None
        for param, values in grid.items():
            if not values:
                raise UserError(f"--tuning.{param}s is empty: give at least one value (leave the option out for the "
                                "paper's grid)")
        if grid and paper in self.grids:
            raise UserError(f"give {paper}'s grid once: --tuning.temperatures/--tuning.epsilons or --tuning.grids")
        if fixed and self.odin_mode != "fixed":
            raise UserError(f"--tuning.temperature/--tuning.epsilon are the parameters of mode 'fixed'; with mode "
                            f"{self.mode!r} they are tuned: drop them or set --tuning.mode fixed")
        if paper not in self.methods:  # they set nothing then
            return
        if grid:
            self.grids[paper] = grid
        self.params += [f"{paper}.{param}={value!r}" for param, value in fixed.items()]
        given = self.fixed_params.get(paper, {})
        if self.odin_mode == "fixed" and not {"temperature", "epsilon"} <= set(given):
            raise UserError("tuning mode 'fixed' needs both --tuning.temperature and --tuning.epsilon")

    @property
    def fixed_params(self) -> dict[str, dict[str, float]]:
        """``params`` as ``{method: {parameter: value}}``."""
        parsed: dict[str, dict[str, float]] = {}
        for item in self.params:
            key, equals, value = item.partition("=")
            method, dot, name = key.strip().partition(".")
            if not (equals and dot and name):
                raise UserError(f"--tuning.params takes method.name=value items (e.g. energy.temperature=1), got "
                                f"{item!r}")
            if method not in self.methods:
                raise UserError(f"--tuning.params {item!r}: {method!r} is not among --tuning.methods "
                                f"({', '.join(self.methods)})")
            if name.strip() in parsed.get(method, {}):
                raise UserError(f"--tuning.params: {method}.{name.strip()} is given twice")
            try:
                parsed.setdefault(method, {})[name.strip()] = float(value)
            except ValueError as err:
                raise UserError(f"--tuning.params {item!r}: {value!r} is not a number") from err
        return parsed

    def _make_grids(self) -> list[MethodGrid]:
        fixed_params = self.fixed_params
        return [MethodGrid.of(name, {**self.grids.get(name, {}),
                                     **{key: [value] for key, value in fixed_params.get(name, {}).items()}})
                for name in self.methods]

    @property
    def method_grids(self) -> tuple[MethodGrid, ...]:
        """Each method's grid (its values, ``params`` fixing single values) and fixed-mode setting, made once."""
        return self._method_grids

    def plan(self, seed: int) -> ProtocolPlan:
        """The paper's protocol plan of these options with the splits' ``seed``."""
        if self.odin_mode is None:
            raise UserError("this run has no mode of the paper's protocol (--tuning.mode openood alone)")
        return ProtocolPlan(self.method_grids, self.odin_mode, self.tune_on, self.n_tune, seed)

    def openood_plan(self, seed: int) -> ProtocolPlan:
        """OpenOOD's plan (every method over its OpenOOD settings; ``odin_pl.protocol.openood``)."""
        if self._openood_plan is None:
            raise UserError("this run has no OpenOOD protocol: add openood to --tuning.mode")
        return ProtocolPlan(self._openood_plan.methods, OPENOOD, seed=seed)


@dataclass
class OpenOODOptions:
    """OpenOOD v1.5's benchmark for ``--tuning.mode openood`` (``datamodules.openood_benchmarks``): its image lists
    and sets under the data root in OpenOOD's layout (``benchmark_imglist/``, ``images_classic/``,
    ``images_largescale/``).

    Args:
        benchmark: ``cifar10``, ``cifar100``, ``imagenet200`` or ``imagenet``.
        download: fetch missing lists and sets from OpenOOD's Google Drive archives (gdown).
        folders: more OOD test sets, ``{"<near|far>/<name>": folder of images}``; ``{"val/<name>": folder}``
            replaces the OOD validation set where OpenOOD's is not at hand (the results say so).
        image_roots: per set, another folder holding its listed images with the same file names (e.g.
            ``{cifar10: /data/cifar10-jpeg}``).
    """

    benchmark: str | None = None
    download: bool = False
    folders: dict[str, str] | None = None
    image_roots: dict[str, str] | None = None


@dataclass
class RuntimeOptions:
    """Where and how scoring runs, in Lightning Fabric's terms.

    Args:
        accelerator: ``auto``, ``cpu``, ``gpu``/``cuda`` or ``mps``.
        devices: processes per node (one GPU each on GPUs). Default: the number torchrun or SLURM started per
            node, else 1. From the command line, ``--runtime.devices N`` starts the N processes itself.
        num_nodes: machines taking part (default: torchrun's or SLURM's count, else 1).
        strategy: ``auto`` (one process: none; several: ``ddp``) or ``ddp``. Every process scores its own
            shard of every set, no image twice, and the metrics equal a single process's.
        precision: ``32-true`` or ``64-true`` (double precision: slower; for exact comparisons).
        batch_size: images per scoring batch.
        num_workers: DataLoader workers.
    """

    accelerator: str = "auto"
    devices: int | None = None
    num_nodes: int | None = None
    strategy: str = "auto"
    precision: str = "32-true"
    batch_size: int = 256
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.accelerator not in ACCELERATORS:
            hint = " (to choose a GPU, set CUDA_VISIBLE_DEVICES)" if self.accelerator.startswith("cuda:") else ""
            raise UserError(f"--runtime.accelerator must be one of {', '.join(ACCELERATORS)}, got "
                            f"{self.accelerator!r}{hint}")
        for name in ("devices", "num_nodes"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UserError(f"--runtime.{name} must be >= 1, got {getattr(self, name)}")
        if self.strategy not in STRATEGIES:
            raise UserError(f"--runtime.strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r} "
                            "(scoring keeps a whole model on every process; it needs no sharded strategy)")
        if self.batch_size < 1:
            raise UserError(f"--runtime.batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise UserError(f"--runtime.num_workers must be >= 0 (0: load in the main process), got "
                            f"{self.num_workers}")
        if self.precision not in PRECISIONS:
            raise UserError(f"--runtime.precision must be 32-true or 64-true, got {self.precision!r}: half-precision"
                            " softmax at T = 1000 ties scores that differ by 1e-4, so mixed precision is refused")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float64 if self.precision == "64-true" else torch.float32


@dataclass
class OutputOptions:
    """Where results go.

    Args:
        dir: output folder (default: the run folder's ``evaluation/`` next to ``checkpoints/``).
        overwrite: replace the results of an earlier evaluation in ``dir`` (default: refuse; its detector files
            and figures that this run does not write again are removed).
        resume: reuse the saved per-image scores of an interrupted run in ``dir`` (whole passes, and the chunks of a
            stopped pass) that prove to match (same weights, images, splits and settings; a checksum and range
            check of the scores) instead of scoring them again.
        logger: log the run (W&B, offline without network, or CSV: see ``--logger.*``).
    """

    dir: str | None = None
    overwrite: bool = False
    resume: bool = False
    logger: bool = True


@dataclass
class AnalysesOptions:
    """The paper's analyses of the scores (figures and tables under analyses/).

    Args:
        names: comma-separated analysis names, or ``all``.
        images: images per set for the per-image analyses and the distance samples.
    """

    names: list[str] | str | None = None
    images: int = 1000

    def __post_init__(self) -> None:
        self.names = parse_analyses(",".join(comma_list(self.names)))
        if self.images < 2:
            raise UserError(f"--analyses.images must be at least 2, got {self.images}")


@dataclass
class BootstrapOptions:
    """Bootstrap intervals of every reported metric (paired resamples of the test splits).

    Args:
        resamples: paired resamples of each OOD set's test split (0: no intervals).
        show: print ``[low, high]`` next to each number of the tables.
    """

    resamples: int = DEFAULT_RESAMPLES
    show: bool = False

    def __post_init__(self) -> None:
        if self.resamples < 0 or self.resamples == 1:
            raise UserError(f"--bootstrap.resamples must be 0 (no intervals) or at least 2, got {self.resamples}")
        if self.show and not self.resamples:
            raise UserError("--bootstrap.show needs intervals: set --bootstrap.resamples (e.g. 1000)")


@dataclass
class ModelSource:
    """What to evaluate: ``ckpt`` (a checkpoint of train.py, which records its DataModule; ``data`` replaces it),
    or ``model`` + ``weights`` + ``data`` (a plain state_dict of any timm or odin_pl model and its in-distribution
    DataModule).

    Args:
        ckpt: checkpoint written by train.py.
        model: instead of ``ckpt``: a model name registered in timm or by this project.
        weights: the model's state_dict file (read with ``weights_only=True``).
        trust_pickle: trust the source of ``ckpt`` or ``weights``: unpickle whole objects (a pickled model;
            unpickling runs code from the file) and import a checkpoint's DataModule from outside ``datamodules``.
        data: the in-distribution DataModule (``class_path`` + ``init_args``, as in train.py's configs).
        data_root: root folder of the data sets (default: $ODIN_PL_DATA, else ./data).
        seed: seed of the tuning/test splits, of the generated noise sets and of image subsets.
    """

    ckpt: str | None = None
    model: str | None = None
    weights: str | None = None
    trust_pickle: bool = False
    data: LightningDataModule | None = None
    data_root: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        foreign = (self.model, self.weights)
        if self.ckpt is None and (None in foreign or self.data is None):
            raise UserError("say what to evaluate: --ckpt PATH (a checkpoint of train.py), or all of --model NAME "
                            "--weights FILE --data DATAMODULE (or --dataset NAME) for a state_dict of another model")
        if self.ckpt is not None and foreign != (None, None):
            raise UserError("give either --ckpt or --model/--weights, not both")
        if self.seed < 0:
            raise UserError(f"--seed must be >= 0, got {self.seed}")

    @property
    def weights_file(self) -> Path:
        """The file holding the evaluated weights (its SHA-256 fingerprints the run's scores)."""
        return Path(self.ckpt if self.ckpt is not None else self.weights)

    def default_output_dir(self) -> Path:
        """The run folder's ``evaluation/`` (the parent of ``checkpoints/``), else ``evaluation/`` beside the file."""
        parent = self.weights_file.resolve().parent
        return (parent.parent if parent.name == "checkpoints" else parent) / "evaluation"


@dataclass
class ProtocolConfig(ModelSource):
    """A protocol run: what to evaluate (a checkpoint, or a model, its weights and data) and how.

    Args:
        fit_images: the methods fitted on training images (mahalanobis, react, knn, vim, ...) fit on a seeded
            subset of this many in-distribution training images (default: all of them).
    """

    fit_images: int | None = None
    ood: OODOptions = field(default_factory=OODOptions)
    tuning: TuningOptions = field(default_factory=TuningOptions)
    openood: OpenOODOptions = field(default_factory=OpenOODOptions)
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    output: OutputOptions = field(default_factory=OutputOptions)
    analyses: AnalysesOptions = field(default_factory=AnalysesOptions)
    bootstrap: BootstrapOptions = field(default_factory=BootstrapOptions)
    logger: LoggerOptions = field(default_factory=LoggerOptions)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fit_images is not None:
            if self.fit_images < 1:
                raise UserError(f"--fit_images must be at least 1 (training images to fit the feature methods on), "
                                f"got {self.fit_images}; leave it out to fit on all of them")
            if not any(grid.method.needs_fit for grid in self.tuning.method_grids):
                fitted = [name for name in list_methods() if create_method(name).needs_fit]
                raise UserError(f"--fit_images sets the training images of the feature methods ({', '.join(fitted)}), "
                                f"and --tuning.methods ({', '.join(self.tuning.methods)}) has none of them: "
                                "drop it or add such a method")
        if self.tuning.openood != (self.openood.benchmark is not None):
            raise UserError("--openood.benchmark NAME goes with --tuning.mode openood (or paper,openood), and only "
                            "with it")
        if self.analyses.names and self.tuning.odin_mode is None:
            raise UserError("the analyses study the paper's protocol: add one of its modes (e.g. paper,openood)")
        check_analyses(self.analyses.names, self.tuning.methods)
        if self.analyses.names and (self.runtime.devices or 1) * (self.runtime.num_nodes or 1) > 1:
            raise UserError("the analyses run in a single process: run them with --runtime.devices 1, or later on "
                            "the finished run with `evaluate.py analyses RUN_DIR`")

    @property
    def output_dir(self) -> Path:
        return Path(self.output.dir) if self.output.dir else self.default_output_dir()

    def check_output_dir(self) -> str:
        """Refuse an output folder that is a file, cannot be created or written, or holds an earlier evaluation's
        results (unless resumed or overwritten), before any work; returns a console line when they are replaced."""
        out = self.output_dir
        if out.exists() and not out.is_dir():
            raise UserError(f"--output.dir {out} is a file: give a folder (it is created when missing)")
        existing = next(p for p in (out, *out.parents) if p.exists())
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UserError(f"--output.dir {out}: {existing} is not writable; give a folder you can write to")
        earlier = [name for name in RUN_FILES if (out / name).is_file() or any((out / name).glob("*"))]
        if not earlier or self.output.resume:
            return ""
        if not self.output.overwrite:
            raise UserError(f"{out} holds an earlier evaluation ({', '.join(earlier)}): continue it with "
                            "--output.resume true, evaluate into another folder with --output.dir DIR, or replace "
                            "it with --output.overwrite true")
        return f"--output.overwrite true: the earlier evaluation in {out} is replaced"


@dataclass
class PredictConfig(ModelSource):
    """Score every image of a folder or named set with a saved detector.

    Args:
        images: a folder of images, or an OOD set name.
        detector: a detector file written by the protocol (``<output_dir>/detectors/<set>.json``).
        num_images: score a seeded subset of this many images (default: all).
        output_dir: where ``predictions/<set>.csv`` goes (default: the run folder's ``evaluation/``).
        allow_other_weights: use a detector tuned with other weights than the model's (a warning names both;
            by default such a detector is refused).
    """

    images: str | None = None
    detector: str | None = None
    num_images: int | None = None
    output_dir: str | None = None
    allow_other_weights: bool = False
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.images is None:
            raise UserError("predict needs --images FOLDER_OR_SET (the images to score)")
        if self.detector is None:
            raise UserError("predict needs --detector FILE (the protocol writes them to <output_dir>/detectors/)")

    @property
    def output_folder(self) -> Path:
        return Path(self.output_dir) if self.output_dir else self.default_output_dir()
