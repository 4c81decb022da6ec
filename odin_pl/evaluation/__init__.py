"""One evaluation run of ``evaluate.py``: typed options (``options``), the model and data to evaluate and the protocol
with resumable score files (``run``, ``score_store``), processes and devices (``runtime``), the run folder's files
(``outputs``), logging (``logs``) and the mean over runs (``aggregate``)."""

from odin_pl.evaluation.options import PredictConfig, ProtocolConfig
from odin_pl.evaluation.run import ProtocolRun, evaluate_protocol, load_target

__all__ = ["PredictConfig", "ProtocolConfig", "ProtocolRun", "evaluate_protocol", "load_target"]
