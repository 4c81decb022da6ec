"""Lightning callbacks of odin-pl."""

from callbacks.odin_eval import ODINEvalCallback

__all__ = ["ODINEvalCallback"]
