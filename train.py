"""Train a classifier: ``python train.py`` (the offline quickstart) or ``python train.py --config FILE ...``.

A LightningCLI over ``odin_pl.ImageClassifier`` and any ``datamodules.ImageDataModule`` with the subcommands
``fit`` (the default: ``python train.py ARGS`` is ``python train.py fit ARGS``), ``validate`` and ``test``. ``fit``
trains, reports test accuracy, then prints the checkpoint path and the ``evaluate.py`` command to run next.
Resume an interrupted run with ``--ckpt_path PATH`` (or ``last``); ``validate``/``test`` take ``--ckpt_path`` too.
Several ``--config`` files compose, later ones overriding earlier ones, on top of ``configs/trainer/default.yaml``,
which is always loaded first (see ``configs/README.md``); when none of them (and no ``--data`` flag) chooses the
data, the quickstart config comes first and gives what they do not set (``--config configs/logger/csv.yaml`` alone
trains the quickstart with CSV files). ODINEvalCallbacks without a name after the first are named ``odin_eval<k>``.

Checkpoints (``callbacks.RunCheckpoint``) are added here rather than in a config: a YAML list such as
``trainer.callbacks`` is replaced, not merged, by a later config, and whether a "best" checkpoint may be kept depends
on the data. Unless ``trainer.enable_checkpointing`` is false, ``<trainer.default_root_dir>/checkpoints/last.ckpt``
is written atomically after every epoch and, only when the DataModule holds out a validation split
(``val_split > 0``), ``best.ckpt`` at the highest ``val/acc``; the test accuracy is then that of ``best.ckpt``,
which is the checkpoint printed for evaluation. With ``val_split = 0`` (the paper's configs) validation runs on the
test set, so nothing is selected on it. A new run into the folder of another run (finished or not) is refused:
resume it with ``--ckpt_path last``, train into another folder, or replace its checkpoints with ``--overwrite true``
(evaluate.py's ``--output.overwrite true`` does the same for an evaluation folder).
``--trainer.fast_dev_run`` writes no checkpoint and starts no logger.

The logger is the ``logger:`` group's (``configs/logger/``, the format evaluate.py reads too) unless ``trainer.logger``
is set: a W&B run ``<experiment>-seed<seed>`` (``-<tag>`` with ``--logger.tag``) with job type ``train`` in the
group ``<experiment>`` (offline without network), holding the resolved config (``callbacks.TrainingRun``), the
metrics and, at the end of ``fit``, the last checkpoint as a model artifact. Checkpoints keep the run's id: a
resumed fit continues the same W&B run.

Data are checked before a logger run is created, and a new W&B run of a start that fails before its first step is
removed. ``trainer.precision: auto`` picks the precision this machine runs fast (``odin_pl.training.precision``).
Without a terminal (a log file), progress is a line per epoch instead of a progress bar. On the command line, user
errors end in one line (``train.py: error: ...``) and exit status 2.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import yaml
from lightning.fabric.connector import _PRECISION_INPUT
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from callbacks.odin_eval import ODINEvalCallback
from callbacks.run_checkpoint import RunCheckpoint
from callbacks.training_run import TrainingRun
from datamodules.base import ImageDataModule
from odin_pl.archives import check_archive
from odin_pl.cli_errors import one_line_parse_errors
from odin_pl.tracking.artifacts import artifact_name, log_checkpoint
from odin_pl.training.checkpoint import run_progress, training_record
from odin_pl.training.console import ProgressLines, one_line_warnings, quiet_console
from odin_pl.training.precision import choose_precision
from odin_pl.fingerprint import file_sha256
from odin_pl.tracking.loggers import (LoggerOptions, build_logger, describe_logger, discard_run, finish_logger,
                                      wandb_run)
from odin_pl.training.module import ImageClassifier
from odin_pl.errors import UserError, report_user_error, without_debug_flag

ROOT = Path(__file__).resolve().parent
QUICKSTART_CONFIG = ROOT / "configs" / "experiment" / "quickstart.yaml"
TRAINER_DEFAULTS = ROOT / "configs" / "trainer" / "default.yaml"
SUBCOMMANDS = ("fit", "validate", "test")


class Trainer(pl.Trainer):
    """Lightning's Trainer, whose ``precision`` also takes ``auto``: :class:`TrainCLI` replaces it by the precision
    this machine runs fast (``odin_pl.training.precision``) before the trainer is built."""

    def __init__(self, *args: Any, precision: _PRECISION_INPUT | Literal["auto"] | None = None, **kwargs: Any) -> None:
        if precision == "auto":
            raise UserError("trainer.precision auto is resolved by train.py; give Trainer a Lightning precision")
        super().__init__(*args, precision=precision, **kwargs)


@rank_zero_only
def say(line: str) -> None:
    """Print ``line`` on the console of the process that logs (global rank 0)."""
    print(line, flush=True)


def name_evaluation_callbacks(callbacks: list[Callback]) -> list[str]:
    """Name every :class:`ODINEvalCallback` without a name after the first one ``odin_eval<k>`` (k: its position
    among them), so that no two log under the same keys; refuse two with the same given name. Returns a console
    line per name given. Runs before the trainer exists, so a refusal leaves no logger run."""
    evaluations = [c for c in callbacks if isinstance(c, ODINEvalCallback)]
    given = [c.name for c in evaluations if c.name]
    if repeated := sorted({name for name in given if given.count(name) > 1}):
        raise UserError(f"trainer.callbacks: several ODINEvalCallbacks are named {', '.join(repeated)} and would log "
                        "under the same keys: give each a distinct init_args.name")
    unnamed, notes = [c for c in evaluations if not c.name][1:], []
    for position, callback in enumerate(evaluations, 1):
        if callback in unnamed:
            callback.name = next(name for name in (f"odin_eval{position}{'_' * k}" for k in range(len(evaluations)))
                                 if name not in given)
            given.append(callback.name)
            notes.append(f"trainer.callbacks: ODINEvalCallback {position} has no name and another one logs under "
                         f"ood/: it logs under {callback.prefix} (set its init_args.name to choose)")
    return notes


class DiscardFailedStart(Callback):
    """Removes the new W&B run of a run that fails before its first optimizer step (``discard_run``), so that a
    failed start leaves no empty run behind."""

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if trainer.global_step == 0 and (note := discard_run(trainer.logger)):
            print(note, flush=True)


class TrainCLI(LightningCLI):
    """The LightningCLI of train.py: the checkpoint callback and a default logger added, the run folder and the
    data checked before the run starts (see the module docstring), and after ``fit`` the test accuracy and the
    next command."""

    checkpoint_path = ""  # after fit: the checkpoint to evaluate
    new_logger_run = False  # the logger: group's logger starts a new run (not a resumed one)
    run_checkpoint: RunCheckpoint | None = None  # None with trainer.enable_checkpointing false

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name in SUBCOMMANDS}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--experiment", type=str, default="train", help="run name (logger, output folders)")
        parser.add_argument("--skip_test", type=bool, default=False, help="fit: do not report test accuracy at the end")
        parser.add_argument("--overwrite", type=bool, default=False,
                            help="fit: replace the checkpoints of another run in the folder (default: refuse)")
        parser.add_class_arguments(LoggerOptions, "logger")  # mapped into trainer.logger unless that is set

    def parse_arguments(self, parser: LightningArgumentParser, args: list[str]) -> None:
        """Parse ``args``: train.py passes the command line itself, with its defaults added (LightningCLI's own
        method warns about receiving both); a parse error is one line (:mod:`odin_pl.cli_errors`)."""
        with one_line_parse_errors(parser):
            self.config = parser.parse_args(args)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The configured trainer with a :class:`RunCheckpoint` under ``<default_root_dir>/checkpoints``, a
        :class:`TrainingRun`, ``precision: auto`` resolved, progress as lines (:class:`ProgressLines`) where the
        progress bar is off or stdout is not a terminal, and, unless ``trainer.logger`` is set, the ``logger:``
        group's logger (none with fast_dev_run)."""
        config = self._get(self.config_init, "trainer", default={})
        configured = config.get("callbacks") or []
        callbacks: list[Callback] = list(configured) if isinstance(configured, list) else [configured]
        if config.get("precision") == "auto":
            kwargs["precision"] = self._auto_precision(config)
        for note in name_evaluation_callbacks(callbacks):
            say(note)
        if not config.get("enable_progress_bar", True) or not sys.stdout.isatty():
            kwargs["enable_progress_bar"] = False  # a bar writes hundreds of carriage returns into a log file
            callbacks.append(ProgressLines())
        root = Path(config.get("default_root_dir") or os.getcwd())
        if config.get("enable_checkpointing") is not False:
            self.run_checkpoint = RunCheckpoint(str(root / "checkpoints"), getattr(self.datamodule, "val_split", 0) > 0)
            callbacks.append(self.run_checkpoint)
        experiment, seed = self._get(self.config, "experiment"), self._get(self.config, "seed_everything")
        seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
        resolved = {key: value for key, value in (self.config[self.subcommand] if self.subcommand else self.config)
                    .as_dict().items() if key != "config" and not key.startswith("__")}  # not the files' names
        if "precision" in kwargs:
            resolved["trainer"]["precision"] = kwargs["precision"]  # what ran, not "auto"
        callbacks.append(TrainingRun(experiment, seed, resolved))
        if config.get("logger") is None:
            kwargs.setdefault("logger", False if config.get("fast_dev_run") else self._logger(root, experiment, seed))
            if self.new_logger_run:
                callbacks.append(DiscardFailedStart())
        return super().instantiate_trainer(**{"callbacks": callbacks, **kwargs})

    def _auto_precision(self, config: dict[str, Any]) -> str:
        """``trainer.precision: auto`` resolved for this model's backbone and data (one console line says which and
        why)."""
        spec = self.datamodule.image_spec
        options = {k: v for k, v in self.model.hparams.items() if not k.startswith("_")}  # not Lightning's own
        measured = type(self.model)(**{**options, "image_spec": spec.to_dict(), "compile": False})
        devices = config.get("devices", 1)
        devices = len(devices) if isinstance(devices, list) else int(devices) if str(devices).isdigit() else 1
        processes = devices * (config.get("num_nodes") or 1)
        choice = choose_precision(str(config.get("accelerator") or "auto"), processes, measured,
                                  (spec.channels, spec.size, spec.size), measured.hparams.num_classes)
        say(choice.line())
        return choice.precision

    def _logger(self, root: Path, experiment: str, seed: int | None) -> Logger:
        """The ``logger:`` group's logger: run ``<experiment>-seed<seed>`` in group ``<experiment>``, job type
        ``train`` (fit) or the subcommand; a resumed fit continues the W&B run its checkpoint names."""
        ckpt_path, run = self._get(self.config, "ckpt_path"), {}
        if ckpt_path == "last":
            ckpt_path = Path(self.run_checkpoint.dirpath, "last.ckpt") if self.run_checkpoint is not None else None
        if self.subcommand in ("fit", None) and ckpt_path is not None and Path(ckpt_path).is_file():
            run = training_record(ckpt_path).get("logger") or {}
        self.new_logger_run = run.get("id") is None
        options = self._get(self.config_init, "logger")
        name = options.default_name(experiment, *([] if seed is None else [f"seed{seed}"]))
        return build_logger(options, root, name=name, group=experiment,
                            job_type="train" if self.subcommand in ("fit", None) else self.subcommand,
                            run_id=run.get("id") if run.get("backend") == "wandb" else None)

    def _before_run(self) -> None:
        """Refuse a run that would lose work or resume nothing, then load the data and the OOD sets of the
        ODINEvalCallbacks: all before a logger run is created."""
        self._check_checkpoint_folder()
        self.datamodule.prepare_data()
        self.datamodule.setup(self.subcommand)
        spec, data_root = self.datamodule.image_spec, getattr(self.datamodule, "data_root", None)
        for callback in self.trainer.callbacks:
            for ood in callback.ood if isinstance(callback, ODINEvalCallback) else ():
                ood.bind(spec, data_root).setup()  # the callback's OOD sets, loaded once: missing data stop here

    before_fit = before_validate = before_test = _before_run

    def _check_checkpoint_folder(self) -> None:
        ckpt_path = self._get(self.config, "ckpt_path")
        last = Path(self.run_checkpoint.dirpath, "last.ckpt") if self.run_checkpoint is not None else None
        if ckpt_path == "last" and (last is None or not last.is_file()):
            raise UserError(f"--ckpt_path last: there is no checkpoint to resume "
                            f"({last or 'trainer.enable_checkpointing is off'}); start a new run without "
                            "--ckpt_path, or set --trainer.default_root_dir to the folder of the run to resume")
        given = last if ckpt_path == "last" else Path(ckpt_path) if ckpt_path is not None else None
        if given is not None and given.is_file():
            check_archive(given, "checkpoint")  # Lightning's own loading does not check the CRC-32
        if self.subcommand != "fit" or ckpt_path is not None or last is None or self.trainer.fast_dev_run:
            return
        if last.is_file():
            finished, epochs = run_progress(last)
            if self._get(self.config, "overwrite"):
                say(f"--overwrite true: the checkpoints of the earlier run in {last.parent} are replaced")
                return
            state = "a finished run" if finished else f"a run that stopped after {epochs} epoch(s) without finishing"
            resume = "" if finished else "resume it with --ckpt_path last, "
            raise UserError(f"{last} is from {state}: {resume}train into another folder with "
                            "--trainer.default_root_dir DIR, or replace its checkpoints with --overwrite true")

    def after_fit(self) -> None:
        """Report test accuracy (of best.ckpt when one is kept), then print the checkpoint and what to run next."""
        trainer, callback = self.trainer, self.run_checkpoint
        best = callback.best_model_path if callback is not None else ""
        if not self._get(self.config, "skip_test"):
            trainer.test(self.model, datamodule=self.datamodule, verbose=True, ckpt_path=best or None)
        self.checkpoint_path = (best or callback.last_model_path) if callback is not None else ""
        if trainer.is_global_zero:
            self._log_last_checkpoint()
            if note := describe_logger(trainer.logger):
                print(note)
            if self.checkpoint_path:
                print(f"Checkpoint: {self.checkpoint_path}\nEvaluate it with:\n  python evaluate.py --ckpt "
                      f"{self.checkpoint_path}")
            else:
                why = "--trainer.fast_dev_run" if trainer.fast_dev_run else "trainer.enable_checkpointing is off"
                print(f"No checkpoint was written ({why})")
        finish_logger(trainer.logger)

    def after_validate(self) -> None:
        finish_logger(self.trainer.logger)

    after_test = after_validate

    def _log_last_checkpoint(self) -> None:
        """``last.ckpt`` as the W&B run's model artifact ``model-<run id>`` (unless ``logger.log_model`` is off)."""
        run = wandb_run(self.trainer.logger)
        last = Path(self.run_checkpoint.last_model_path) if self.run_checkpoint is not None else None
        if run is None or last is None or not last.is_file() or not self._get(self.config_init, "logger").log_model:
            return
        record = training_record(last)
        metadata = {"experiment": record.get("experiment"), "seed": record.get("seed"), "epochs": run_progress(last)[1]}
        log_checkpoint(run, last, artifact_name("model", run.id), file_sha256(last), metadata)


def names_data(args: list[str]) -> bool:
    """Whether ``args`` choose the data set: ``--data CLASS``, ``--data.class_path``, or a ``--config`` file whose
    ``data:`` names a class (``--data.init_args.*`` alone only changes the data set chosen elsewhere)."""
    if any(a == "--data" or a.startswith(("--data=", "--data.class_path")) for a in args):
        return True
    files = [b for a, b in zip(args, args[1:]) if a in ("--config", "-c")]
    files += [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    for file in map(Path, files):
        data = (yaml.safe_load(file.read_text()) or {}).get("data") if file.is_file() else None
        if isinstance(data, str) or (isinstance(data, dict) and "class_path" in data):
            return True
    return False


def with_defaults(args: list[str], run: bool = True) -> list[str]:
    """``args`` with the subcommand first (``fit`` when none is given; none when ``run`` is off) and the quickstart
    config first when they choose no data (no config at all, or configs such as ``configs/logger/csv.yaml`` that
    set other things): the quickstart gives what they do not set."""
    if args[:1] in (["-h"], ["--help"]):
        return args
    command = [args[0]] if args and args[0] in SUBCOMMANDS else ["fit"] if run else []
    rest = args[len(command):] if args[:1] == command else args
    if not names_data(rest):
        rest = ["--config", str(QUICKSTART_CONFIG), *rest]  # the quickstart is the default configuration
    return [*command, *rest]


def build_cli(args: list[str], run: bool = True) -> TrainCLI:
    """Parse ``args`` and run the subcommand (``fit`` when none is given); with ``run=False`` only parse the fit
    configuration and build model, data and trainer."""
    quiet_console()
    defaults = {"default_config_files": [str(TRAINER_DEFAULTS)]}
    return TrainCLI(ImageClassifier, ImageDataModule, subclass_mode_data=True, trainer_class=Trainer, run=run,
                    args=with_defaults(args, run), save_config_kwargs={"overwrite": True},
                    auto_configure_optimizers=False,
                    parser_kwargs={name: defaults for name in SUBCOMMANDS} if run else defaults)


def with_train_flags(message: str) -> str:
    """``message`` with evaluate.py's ``--data_root`` (which data errors name) as train.py spells it."""
    return re.sub(r"--data_root\b", "--data.init_args.data_root", message)


def main(args: list[str] | None = None) -> str:
    """Run train.py; returns the path of the checkpoint to evaluate (after ``fit``; else "")."""
    return build_cli(without_debug_flag(sys.argv[1:] if args is None else args)).checkpoint_path


def run_command_line() -> int:
    """``main()`` for the shell: a user error (:class:`~odin_pl.errors.UserError`) ends in one line on stderr and
    exit status 2 (its traceback with ``--debug``); any other exception keeps its traceback. Warnings print as
    one line each."""
    one_line_warnings()
    try:
        main()
    except UserError as err:
        return report_user_error("train.py", err, sys.argv[1:], rewrite=with_train_flags)
    return 0


if __name__ == "__main__":
    sys.exit(run_command_line())
