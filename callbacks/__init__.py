"""Lightning callbacks of odin-pl."""

from callbacks.odin_eval import ODINEvalCallback
from callbacks.run_checkpoint import RunCheckpoint
from callbacks.training_run import TrainingRun

__all__ = ["ODINEvalCallback", "RunCheckpoint", "TrainingRun"]
