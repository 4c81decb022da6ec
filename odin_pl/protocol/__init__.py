"""The evaluation protocols over data sets: the plan of a run (``plan``), seeded tuning/test splits and the
selection of each method's setting (``tuning``), the run over the OOD sets with scoring passes shared by all methods
(``run``), its typed result (``records``), the fits of the methods that need one (``fits``) and bootstrap intervals
(``bootstrap``)."""

from odin_pl.protocol.plan import MethodGrid, ProtocolPlan
from odin_pl.protocol.records import ProtocolResult, Record
from odin_pl.protocol.run import ModelScorer, ScoreCache, Scorer, run_protocol
from odin_pl.protocol.tuning import Selection, SetSplit, select_setting

__all__ = ["MethodGrid", "ModelScorer", "ProtocolPlan", "ProtocolResult", "Record", "ScoreCache", "Scorer",
           "Selection", "SetSplit", "run_protocol", "select_setting"]
