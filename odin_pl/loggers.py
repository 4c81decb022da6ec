"""Experiment logger choice: Weights & Biases (offline without network or credentials), else CSV."""

from __future__ import annotations

import importlib.util
import netrc
import os
import socket
import warnings
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

WANDB_HOST = "api.wandb.ai"


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


def default_logger(save_dir: str | Path, project: str = "odin-pl", name: str | None = None) -> Logger:
    """A WandbLogger (online when possible, else offline), or a CSVLogger when wandb is disabled or missing.

    ``WANDB_MODE`` is respected: ``disabled`` selects CSV, ``offline`` forces offline mode.
    """
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode == "disabled" or importlib.util.find_spec("wandb") is None:
        why = "WANDB_MODE=disabled" if mode == "disabled" else "wandb is not installed"
        warnings.warn(f"W&B logging is off ({why}); metrics go to CSV files under {save_dir}", stacklevel=2)
        return CSVLogger(save_dir=str(save_dir), name=name or "csv")
    offline = mode in ("offline", "dryrun") or (mode != "online" and not _wandb_can_sync())
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    logger = WandbLogger(project=project, name=name, save_dir=str(save_dir), offline=offline)
    logger._wandb_init.pop("anonymous")  # Lightning passes anonymous=None, which wandb warns has no effect
    return logger


def describe_logger(logger: Logger | None) -> str:
    """One line that says where the run was saved and, for offline W&B runs, how to upload it."""
    if isinstance(logger, WandbLogger):
        run_dir = Path(logger.experiment.dir).parent
        if getattr(logger, "_offline", False):
            return f"W&B run saved offline in {run_dir}; upload it with: wandb sync {run_dir}"
        return f"W&B run: {logger.experiment.url}"
    if logger is not None and getattr(logger, "log_dir", None):
        return f"Metrics saved in {logger.log_dir}"
    return ""
