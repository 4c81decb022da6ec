"""Keep train.py's console to what a user can act on: drop notes that Lightning and PyTorch print on every run."""

from __future__ import annotations

import logging
import warnings

from lightning_utilities.core import rank_zero

LEAFSPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"  # torch's, about Lightning's own code


class _NoTips(logging.Filter):
    """Drops Lightning's "💡 Tip: ..." advertisements (litlogger)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("💡 Tip")


def quiet_console() -> None:
    """Silence Lightning's litlogger tip and torch's FutureWarning about Lightning's use of ``LeafSpec``
    (calling it again adds nothing)."""
    if not any(isinstance(f, _NoTips) for f in rank_zero.log.filters):
        rank_zero.log.addFilter(_NoTips())
    warnings.filterwarnings("ignore", message=LEAFSPEC_WARNING, category=FutureWarning)
