"""The typed result of a protocol run: one :class:`Record` per reported (OOD set, method, tuning), and the
:class:`ProtocolResult` that holds them with the scores, selections and splits behind them."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from torch import Tensor

from odin_pl.methods import Setting
from odin_pl.protocol.plan import MethodGrid, ProtocolPlan
from odin_pl.protocol.tuning import Selection, SetSplit


@dataclass(frozen=True)
class Record:
    """A method at one setting on one OOD set's test split (against the in-distribution test split).

    ``params``: the setting by parameter name (``Method.named``, the fields of the result files); ``metrics``:
    ``odin_pl.metrics.ood_metrics`` of the test scores; ``n_in`` / ``n_out``: the test splits' sizes; ``tuned_on``:
    the set the setting was chosen on (None: fixed parameters), with that tuning's FPR at 95% TPR and its grid-edge
    note; ``intervals``: bootstrap fields ``<metric>_ci_low``, ... (``odin_pl.protocol.bootstrap``); ``protocol``:
    the protocol the number comes from, ``odin`` (the ODIN paper's, in any of its modes) or ``openood`` (OpenOOD
    v1.5's, ``odin_pl.protocol.openood``: its metrics are also in ``metrics`` as ``openood_<metric>``).
    """

    ood: str
    method: str
    setting: Setting
    params: Mapping[str, float]
    metrics: Mapping[str, float]
    n_in: int
    n_out: int
    tuned_on: str | None = None
    tuning_fpr: float | None = None
    grid_edge: str | None = None
    intervals: Mapping[str, float] = field(default_factory=dict)
    protocol: str = "odin"

    @property
    def key(self) -> tuple[str, Setting]:
        """(method, setting): the key of its scores in :class:`ProtocolResult`."""
        return self.method, self.setting

    def with_intervals(self, intervals: Mapping[str, float]) -> "Record":
        return replace(self, intervals=dict(intervals))

    def to_dict(self) -> dict[str, Any]:
        """The record as results.json and results.csv write it: set, method, metrics, parameters, sizes, tuning set
        (and, when tuned, the tuning's FPR at 95% TPR and grid-edge note), then the bootstrap fields."""
        fields = {"ood": self.ood, "method": self.method, "protocol": self.protocol, **self.metrics, **self.params,
                  "n_in": self.n_in, "n_out": self.n_out, "tuned_on": self.tuned_on}
        if self.tuned_on is not None:
            fields.update(tuning_fpr_at_95_tpr=self.tuning_fpr, grid_edge=self.grid_edge)
        return {**fields, **self.intervals}


@dataclass
class ProtocolResult:
    """What a protocol run found:

    * ``plan``: what it ran (methods, mode, tuning set, tuning size, seed);
    * ``records``: per OOD set and method, the metrics on the test splits (one per tuning in cross mode);
    * ``tuning_scores``: per tuned method and set (``in_distribution`` included), the tuning split's scores over
      the method's grid [len(settings), n];
    * ``in_test_scores``: the in-distribution test split's scores per (method, setting) reported on it;
    * ``ood_test_scores``: per OOD set, its test split's scores per (method, setting) reported on it;
    * ``selections``: per tuned method and tuning set, the chosen setting;
    * ``splits``: each set's seeded tuning / test split; ``notes`` for the user.
    """

    plan: ProtocolPlan
    records: list[Record] = field(default_factory=list)
    tuning_scores: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    in_test_scores: dict[tuple[str, Setting], Tensor] = field(default_factory=dict)
    ood_test_scores: dict[str, dict[tuple[str, Setting], Tensor]] = field(default_factory=dict)
    selections: dict[str, dict[str, Selection]] = field(default_factory=dict)
    splits: dict[str, SetSplit] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def methods(self) -> tuple[MethodGrid, ...]:
        return self.plan.methods

    @property
    def method_names(self) -> list[str]:
        return [m.name for m in self.plan.methods]

    def main_records(self) -> dict[str, dict[str, Record]]:
        """Per OOD set, per method, its main-table record (tuned on the set itself when several tunings were
        reported, as in cross mode)."""
        by_set: dict[str, dict[str, Record]] = {}
        for record in self.records:
            methods = by_set.setdefault(record.ood, {})
            if record.method not in methods or record.tuned_on == record.ood:
                methods[record.method] = record
        return by_set

    @property
    def test_scores(self) -> dict[str, dict[str, tuple[Tensor, Tensor]]]:
        """Per OOD set and method, the (in-distribution, OOD) test-split scores of its main-table entry."""
        return {name: {method: (self.in_test_scores[record.key], self.ood_test_scores[name][record.key])
                       for method, record in records.items()} for name, records in self.main_records().items()}
