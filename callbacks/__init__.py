"""Lightning callbacks of odin-pl."""

from callbacks.odin_eval import ODINEvalCallback
from callbacks.run_checkpoint import RunCheckpoint

__all__ = ["ODINEvalCallback", "RunCheckpoint"]
