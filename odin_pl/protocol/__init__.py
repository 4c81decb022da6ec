"""The evaluation protocols over data sets: seeded tuning/test splits, the selection of each method's setting, the
run over the OOD sets (scoring passes shared by all methods), the fits of the methods that need one, bootstrap
intervals, and the result's records."""

from odin_pl.protocol.run import MethodGrid, ProtocolResult, SetSplit, run_protocol
from odin_pl.protocol.tuning import Selection, select_setting

__all__ = ["MethodGrid", "ProtocolResult", "Selection", "SetSplit", "run_protocol", "select_setting"]
