"""The experiment logger of train.py and evaluate.py: its options (the ``logger:`` config group, ``configs/logger/``),
its construction (Weights & Biases, offline without network or credentials, else CSV), the identity of its run and
where the run went."""

from __future__ import annotations

import importlib.util
import netrc
import os
import shutil
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from odin_pl.errors import UserError

WANDB_HOST = "api.wandb.ai"
BACKENDS = ("wandb", "csv")
WANDB_MODES = ("auto", "online", "offline")


@dataclass
class LoggerOptions:
    """The experiment logger: the ``logger:`` mapping of ``configs/logger/*.yaml``, read by train.py and evaluate.py.

    Args:
        backend: ``wandb`` (Weights & Biases; CSV files when ``WANDB_MODE=disabled`` or wandb is not installed) or
            ``csv``.
        mode: W&B: ``auto`` (online with credentials and network, else offline), ``online`` or ``offline``; the
            environment variable ``WANDB_MODE`` overrides it.
        project: the W&B project.
        name: the run's name (default: train.py ``<experiment>-seed<seed>[-<tag>]``; evaluate.py ``<training
            run>-<mode>-<methods>-<sets>[-<tag>]-<fingerprint>``, the fingerprint telling apart evaluations that
            differ in anything else).
        tag: a short label of the run (e.g. ``lr0.01``), added to the default names.
        group: the run's group (default: the experiment; evaluate.py: the group of the checkpoint's training run).
        job_type: the run's job type (default: ``train`` for fit, else the subcommand; ``evaluate``).
        tags: W&B tags.
        log_model: train.py: log the last checkpoint as a model artifact; evaluate.py: log (offline) or use
            (online) the evaluated checkpoint as the evaluation's input artifact.
    """

    backend: str = "wandb"
    mode: str = "auto"
    project: str = "odin-pl"
    name: str | None = None
    tag: str | None = None
    group: str | None = None
    job_type: str | None = None
    tags: list[str] = field(default_factory=list)
    log_model: bool = True

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise UserError(f"--logger.backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.mode not in WANDB_MODES:
            raise UserError(f"--logger.mode must be one of {', '.join(WANDB_MODES)}, got {self.mode!r} (the "
                            "environment variable WANDB_MODE=disabled turns W&B off)")
        self.tags = list(self.tags)
        if self.tag is not None and (not self.tag.strip() or "/" in self.tag):
            raise UserError(f"--logger.tag must be a non-empty label without '/', got {self.tag!r}")

    def default_name(self, *parts: str) -> str:
        """``parts`` joined by '-', with the tag after them."""
        return "-".join([*parts, *([self.tag.strip()] if self.tag else [])])


def _wandb_can_sync(timeout: float = 1.5) -> bool:
    """True when W&B credentials exist and its server answers; offline mode otherwise."""
    has_key = bool(os.environ.get("WANDB_API_KEY"))
    if not has_key:
        try:
            has_key = netrc.netrc().authenticators(WANDB_HOST) is not None
        except (OSError, netrc.NetrcParseError):
            has_key = False
    if not has_key:
        return False
    try:
        socket.create_connection((WANDB_HOST, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def build_logger(options: LoggerOptions, save_dir: str | Path, *, name: str, group: str | None, job_type: str,
                 run_id: str | None = None) -> Logger:
    """The logger ``options`` describe, saving under ``save_dir``: a quiet WandbLogger (online when possible, else
    offline; ``run_id`` continues that run; :func:`describe_logger` gives the one line to print), or a CSVLogger
    with ``backend: csv``, ``WANDB_MODE=disabled`` or without wandb. ``name``, ``group`` and ``job_type`` are the
    defaults of the options left unset."""
    env_mode = os.environ.get("WANDB_MODE", "").lower()
    name = options.name or name
    if options.backend == "csv" or env_mode == "disabled" or importlib.util.find_spec("wandb") is None:
        if options.backend == "wandb":
            why = "WANDB_MODE=disabled" if env_mode == "disabled" else "wandb is not installed"
            warnings.warn(f"W&B logging is off ({why}); metrics go to CSV files under {save_dir}", stacklevel=2)
        return CSVLogger(save_dir=str(save_dir), name=name)
    if env_mode in ("online", "offline", "dryrun"):
        offline = env_mode != "online"
    else:
        offline = options.mode == "offline" or (options.mode == "auto" and not _wandb_can_sync())
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    resume = {"id": run_id, "resume": "allow"} if run_id else {}  # offline: a new part of the run, with its id
    import wandb  # only where W&B is used: importing it takes seconds

    # quiet: no 30-line history and summary at the end (describe_logger says where the run is and how to sync it);
    # not silent, with which wandb 0.31 ends offline runs before their last artifact is written.
    logger = WandbLogger(project=options.project, name=name, save_dir=str(save_dir), offline=offline,
                         group=options.group or group, job_type=options.job_type or job_type,
                         tags=options.tags or None, settings=wandb.Settings(quiet=True), **resume)
    logger._wandb_init.pop("anonymous")  # Lightning passes anonymous=None, which wandb warns has no effect
    return logger


def wandb_run(logger: Logger | None) -> Any:
    """The W&B run of ``logger`` on the process that logs (global rank 0), else None (another logger, or another
    process)."""
    if isinstance(logger, WandbLogger) and rank_zero_only.rank == 0:
        return logger.experiment
    return None


def run_identity(logger: Logger | None) -> dict[str, Any] | None:
    """What identifies the W&B run of ``logger`` (id, name, group, project; kept in checkpoints so that a resumed
    training continues the run and an evaluation joins its group), or None without one."""
    run = wandb_run(logger)
    if run is None:
        return None
    return {"backend": "wandb", "id": run.id, "name": run.name, "group": run.group, "project": run.project}


def describe_logger(logger: Logger | None) -> str:
    """One line that says where the run was saved and, for offline W&B runs, how to upload it."""
    run = wandb_run(logger)
    if run is not None:
        run_dir = Path(run.dir).parent
        if getattr(logger, "_offline", False):
            return f"W&B run saved offline in {run_dir}; upload it with: wandb sync {run_dir}"
        return f"W&B run: {run.url}"
    if logger is not None and getattr(logger, "log_dir", None):
        return f"Metrics saved in {logger.log_dir}"
    return ""


def finish_logger(logger: Logger | None) -> None:
    """End the W&B run of ``logger``, if one was started, and wait until its files are complete: ``finish()`` only
    asks wandb's service to close the run's ``.wandb`` file and does not wait for it (wandb 0.31's
    ``inform_finish``), so that a reader, or a run resumed with the same id in this process, could find the
    folder without its file; ``wandb.teardown()`` waits for the service (the next run starts a new one)."""
    if isinstance(logger, WandbLogger) and rank_zero_only.rank == 0 and logger._experiment is not None:
        logger.experiment.finish()  # _experiment: Lightning starts the run on first use; do not start one here
        import wandb

        wandb.teardown()


def discard_run(logger: Logger | None) -> str:
    """Remove the W&B run of ``logger`` that a failed start created (offline: its folder; online: the run on the
    server), so that a start that failed leaves no empty run; returns a line for the console ("" without a run).
    Only for a new run: a resumed run holds earlier parts."""
    if not isinstance(logger, WandbLogger) or rank_zero_only.rank != 0 or logger._experiment is None:
        return ""
    run = logger.experiment
    run_dir, url, path = Path(run.dir).parent, run.url, run.path
    run.finish(exit_code=1)
    if getattr(logger, "_offline", False):
        shutil.rmtree(run_dir, ignore_errors=True)
        return f"The failed start's W&B run was removed ({run_dir})"
    import wandb

    try:
        wandb.Api().run(path).delete()
    except Exception as err:  # noqa: BLE001 - the server may refuse; say where the run is instead
        return f"The failed start's W&B run could not be deleted ({err}); delete it at {url}"
    return f"The failed start's W&B run was deleted ({url})"
