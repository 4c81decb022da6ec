"""Experiment tracking shared by training and evaluation: the ``logger:`` option group (W&B or CSV) and W&B
artifacts of checkpoints and results."""

from odin_pl.tracking.loggers import LoggerOptions, build_logger

__all__ = ["LoggerOptions", "build_logger"]
