"""OpenOOD v1.5's protocol (DESIGN, "OpenOOD v1.5 protocol"; ``openood/evaluation_api``): one search on separate
validation sets, one setting for every test set, OpenOOD's metrics and near/far means.

* Search space: each method declares its OpenOOD sweep (``Method.openood_grid``: parameter -> values in the key
  order of OpenOOD's sweep; one value per parameter where OpenOOD searches none). The settings are the Cartesian
  product with the *first* key varying fastest (:func:`openood_settings`).
* Search (methods with more than one setting): every setting scored on ID val + OOD val, AUROC of OpenOOD's
  ``compute_all_metrics`` (OOD positive, :func:`odin_pl.openood_metrics.openood_metric_rows`); the first maximum
  in the search order wins (strict >): :func:`select_openood`.
* Test: per OOD test set, the full ID test set + that set, the chosen setting; FPR@95, AUROC, AUPR-In, AUPR-Out as
  OpenOOD computes them and the ID accuracy, in a record's ``metrics`` as ``openood_<metric>`` (beside this
  package's :func:`odin_pl.metrics.ood_metrics`, ID positive, under their own names); near-/far-OOD: the unweighted
  means over the group's evaluated sets (:class:`GroupRecord`).
* Intervals (:func:`openood_intervals`): each test set's paired resamples of :mod:`odin_pl.protocol.bootstrap`
  (seeded by the run's seed and the set's name: the same for every method), OpenOOD's metrics on each; a group
  mean's interval from the mean over its sets of each resample's metric.

Fitted methods fit on the split OpenOOD uses (``Method.openood_fit_split``: ID train, or ID val); the caller makes
the fits (``odin_pl.evaluation.run``). Scores go through the same :class:`~odin_pl.protocol.run.Scorer` and
:class:`~odin_pl.protocol.run.ScoreCache` as the paper's protocol (``<set>__<split>`` passes: resumable).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import product
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from odin_pl.distributed import gather_shards, shard_loader
from odin_pl.errors import UserError
from odin_pl.methods import Method, Setting, create_method
from odin_pl.methods.batch import model_forward
from odin_pl.metrics import metric_rows, ood_metrics
from odin_pl.openood_metrics import OPENOOD_METRIC_NAMES, group_mean, id_accuracy, openood_metric_rows
from odin_pl.protocol.bootstrap import LEVEL, bootstrap_seed, percentile_interval, resample_indices, resampled_metrics
from odin_pl.protocol.plan import MethodGrid, ProtocolPlan
from odin_pl.protocol.records import ProtocolResult, Record
from odin_pl.protocol.run import ScoreCache, Scorer, by_setting, score_pass
from odin_pl.protocol.tuning import Selection

OPENOOD = "openood"
ID_VAL, ID_TEST = "id_val", "id_test"  # the ID splits' names in score files
PREFIX = "openood_"  # a record's OpenOOD metrics: openood_fpr95, ..., openood_acc
GROUPS = ("near", "far")


def openood_settings(method: Method) -> tuple[Setting, ...]:
    """The method's OpenOOD search space in OpenOOD's order (the first key of its sweep fastest), each setting in
    the order of the method's ``params``; ``((),)`` for a method without parameters."""
    names = [param.name for param in method.params]
    sweep = method.openood_grid
    if sweep is None:
        if names:
            raise UserError(f"method {method.name!r} declares no OpenOOD search space (openood_grid), so it cannot "
                            "run under --tuning.mode openood: drop it from --tuning.methods for this mode")
        return ((),)
    if sorted(sweep) != sorted(names):
        raise UserError(f"method {method.name!r}: openood_grid names {sorted(sweep)}, its parameters are {names}")
    keys = list(sweep)
    settings = []
    for values in product(*(sweep[key] for key in reversed(keys))):  # product varies its last axis fastest
        by_name = dict(zip(reversed(keys), values))
        settings.append(method.check_setting([by_name[name] for name in names]))
    if not settings:
        raise UserError(f"method {method.name!r}: an openood_grid axis is empty")
    return tuple(settings)


def openood_plan(methods: Sequence[str], seed: int = 0) -> ProtocolPlan:
    """The plan of an OpenOOD run: each method over its OpenOOD settings (fixed: the first)."""
    grids = []
    for name in methods:
        method = create_method(name)
        settings = openood_settings(method)
        grids.append(MethodGrid(method, settings, settings[0]))
    return ProtocolPlan(tuple(grids), OPENOOD, seed=seed)


def select_openood(method: Method, settings: Sequence[Setting], val_in: Tensor, val_out: Tensor) -> Selection:
    """The first setting (in the search order of ``settings``) with the largest AUROC on ID val + OOD val (strict >:
    a later equal AUROC does not win). ``val_in`` / ``val_out``: [len(settings), n] confidences.
    ``tuning_auroc``: that AUROC; ``tuning_fpr`` and ``fpr_grid``: this package's FPR at 95% TPR (ID positive, as
    in the paper's protocol, so that the fields mean the same in every result file) on the validation sets at the
    chosen setting and at every setting, nested by parameter in the order of each parameter's first appearance."""
    if val_in.shape[0] != len(settings) or val_out.shape[0] != len(settings):
        raise UserError(f"expected validation scores for {len(settings)} settings, got {val_in.shape[0]} and "
                        f"{val_out.shape[0]}")
    aurocs = openood_metric_rows(val_in, val_out)["auroc"].tolist()
    fprs = metric_rows(val_in.double().cpu(), val_out.double().cpu())["fpr_at_95_tpr"].tolist()
    best = 0
    for index in range(1, len(settings)):
        if aurocs[index] > aurocs[best]:
            best = index
    axes = [list(dict.fromkeys(s[j] for s in settings)) for j in range(len(method.params))]
    by_setting = dict(zip((tuple(s) for s in settings), fprs))
    chosen = tuple(settings[best])
    return Selection(method=method.name, setting=chosen, params=method.named(chosen), tuning_fpr=fprs[best],
                     tuning_auroc=aurocs[best], fpr_grid=_nested(by_setting, axes, ()))


def _nested(values: Mapping[Setting, float], axes: list[list[float]], prefix: Setting) -> Any:
    """values as nested lists over ``axes`` (a scalar for no axes)."""
    if len(prefix) == len(axes):
        return values[prefix]
    return [_nested(values, axes, (*prefix, value)) for value in axes[len(prefix)]]


@dataclass(frozen=True)
class OpenOODSets:
    """The data sets of one OpenOOD evaluation: ID val and test (and train for fits), the OOD val set, and the
    near/far-OOD test sets by name; ``skipped``: test sets that are not here, with what to download; ``listed``:
    the benchmark's own members of each group (a group mean over fewer is noted) and its OOD val set (``val``; a
    stand-in is noted)."""

    benchmark: str
    id_val: Dataset
    id_test: Dataset
    ood_val_name: str
    ood_val: Dataset
    near: Mapping[str, Dataset]
    far: Mapping[str, Dataset]
    id_train: Dataset | None = None
    sources: Mapping[str, str] = field(default_factory=dict)
    skipped: Mapping[str, str] = field(default_factory=dict)
    listed: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.near and not self.far:
            raise UserError(f"OpenOOD {self.benchmark}: no near- or far-OOD test set is here "
                            f"({'; '.join(f'{k}: {v}' for k, v in self.skipped.items()) or 'none listed'})")
        both = set(self.near) & set(self.far)
        if both:
            raise UserError(f"OpenOOD {self.benchmark}: {sorted(both)} are in both the near and the far group")

    @property
    def test_sets(self) -> dict[str, Dataset]:
        return {**self.near, **self.far}

    @property
    def groups(self) -> dict[str, list[str]]:
        """The evaluated members of each group that has any."""
        return {group: list(getattr(self, group)) for group in GROUPS if getattr(self, group)}


@dataclass(frozen=True)
class GroupRecord:
    """A method's near- or far-OOD mean: OpenOOD's metrics (fractions) averaged over ``members`` (the group's
    evaluated sets, each counted once), with ``openood_<metric>_ci_low``/``_ci_high`` when bootstrapped."""

    group: str
    method: str
    members: tuple[str, ...]
    metrics: Mapping[str, float]
    intervals: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "method": self.method, "protocol": OPENOOD, "members": list(self.members),
                **self.metrics, **self.intervals}


@dataclass
class OpenOODResult(ProtocolResult):
    """A :class:`ProtocolResult` of OpenOOD's protocol (its ``records`` per test set, ``protocol="openood"``,
    ``selections`` per method on the OOD val set) and what OpenOOD adds: the benchmark, the groups, the group
    means, the ID accuracy and the skipped sets."""

    benchmark: str = ""
    groups: dict[str, list[str]] = field(default_factory=dict)
    group_records: list[GroupRecord] = field(default_factory=list)
    accuracy: float | None = None
    skipped: dict[str, str] = field(default_factory=dict)


@torch.no_grad()
def test_accuracy(model: nn.Module, dataset: Dataset, *, batch_size: int = 256, num_workers: int = 0,
                  device: str | torch.device = "cpu") -> float:
    """OpenOOD's ACC: the accuracy of argmax logits on the ID test set (each process its shard, gathered)."""
    parameter = next(model.parameters())
    logits, labels = [], []
    for images, targets in shard_loader(dataset, batch_size, num_workers):
        logits.append(model_forward(model, images.to(device=device, dtype=parameter.dtype)).cpu().double())
        labels.append(torch.as_tensor(targets, dtype=torch.long))
    n = len(dataset)
    return float(id_accuracy(gather_shards(torch.cat(logits).T.contiguous(), n).T, gather_shards(torch.cat(labels), n)))


def run_openood(plan: ProtocolPlan, sets: OpenOODSets, scorer: Scorer, cache: ScoreCache | None = None,
                accuracy: float | None = None) -> OpenOODResult:
    """OpenOOD's protocol ``plan`` (:func:`openood_plan`) on ``sets``: the search of each method with several
    settings on ID val + OOD val, then every test set with the one chosen setting; ``accuracy``: the ID test
    accuracy (:func:`test_accuracy`) recorded as ``openood_acc``."""
    if plan.mode != OPENOOD:
        raise UserError(f"run_openood runs mode 'openood', not {plan.mode!r} (see odin_pl.protocol.run)")
    for name, dataset in [(ID_VAL, sets.id_val), (ID_TEST, sets.id_test), (sets.ood_val_name, sets.ood_val),
                          *sets.test_sets.items()]:
        if len(dataset) == 0:
            raise UserError(f"OpenOOD set {name!r} is empty: nothing to evaluate")
    result = OpenOODResult(plan, benchmark=sets.benchmark, groups=sets.groups, accuracy=accuracy,
                           skipped=dict(sets.skipped))

    def score(name: str, split: str, dataset: Dataset, scored: Mapping[str, list[Setting]]) -> dict[str, Tensor]:
        return score_pass(scorer, cache, name, split, dataset, scored)

    tuned = plan.tuned
    if tuned:
        search = {m.name: list(m.settings) for m in tuned}
        val_in = score(ID_VAL, "val", sets.id_val, search)
        val_out = score(sets.ood_val_name, "val", sets.ood_val, search)
        for m in tuned:
            result.tuning_scores[m.name] = {ID_VAL: val_in[m.name], sets.ood_val_name: val_out[m.name]}
            result.selections[m.name] = {sets.ood_val_name: select_openood(m.method, m.settings, val_in[m.name],
                                                                           val_out[m.name])}
    chosen = {m.name: result.selections[m.name][sets.ood_val_name].setting if m in tuned else m.settings[0]
              for m in plan.methods}
    test_plan = {name: [setting] for name, setting in chosen.items()}
    result.in_test_scores = by_setting(test_plan, score(ID_TEST, "test", sets.id_test, test_plan))
    per_set: dict[str, dict[str, dict[str, float]]] = {}  # method -> set -> OpenOOD metric
    for name, dataset in sets.test_sets.items():
        out_test = by_setting(test_plan, score(name, "test", dataset, test_plan))
        result.ood_test_scores[name] = out_test
        for m in plan.methods:
            key = (m.name, chosen[m.name])
            s_in, s_out = result.in_test_scores[key], out_test[key]
            theirs = {metric: float(values[0]) for metric, values in
                      openood_metric_rows(s_in.double()[None], s_out.double()[None]).items()}
            per_set.setdefault(m.name, {})[name] = theirs
            selection = result.selections[m.name][sets.ood_val_name] if m in tuned else None
            result.records.append(Record(
                ood=name, method=m.name, setting=chosen[m.name], params=m.method.named(chosen[m.name]),
                metrics={**ood_metrics(s_in, s_out), **_prefixed(theirs, accuracy)}, n_in=len(s_in),
                n_out=len(s_out), tuned_on=sets.ood_val_name if selection else None,
                tuning_fpr=selection.tuning_fpr if selection else None, grid_edge="" if selection else None,
                protocol=OPENOOD))
    for group, members in result.groups.items():
        for m in plan.methods:
            means = {metric: group_mean({n: per_set[m.name][n][metric] for n in members}, members)
                     for metric in OPENOOD_METRIC_NAMES}
            result.group_records.append(GroupRecord(group, m.name, tuple(members), _prefixed(means, accuracy)))
    for name in sets.skipped:
        result.notes.append(f"OpenOOD {sets.benchmark}: {name} skipped (not here): {sets.skipped[name]}")
    if sets.listed.get("val") and sets.ood_val_name not in sets.listed["val"]:
        result.notes.append(f"the search used {sets.ood_val_name} ({sets.sources.get(sets.ood_val_name, 'a folder')}) "
                            f"in place of OpenOOD's {', '.join(sets.listed['val'])}: its settings may differ from "
                            "OpenOOD's")
    for group, members in result.groups.items():
        missing = [name for name in sets.listed.get(group, ()) if name not in members]
        if missing:
            result.notes.append(f"the {group}-OOD mean is over {', '.join(members)} only ({', '.join(missing)} "
                                "missing): not OpenOOD's full mean")
    return result


def _prefixed(metrics: Mapping[str, float], accuracy: float | None) -> dict[str, float]:
    out = {f"{PREFIX}{metric}": value for metric, value in metrics.items()}
    return {**out, f"{PREFIX}acc": accuracy} if accuracy is not None else out


def openood_intervals(result: OpenOODResult, resamples: int, level: float = LEVEL) -> OpenOODResult:
    """``result`` with the bootstrap intervals of OpenOOD's metrics (``openood_<metric>_ci_low``/``_ci_high``) on
    every record and group mean, added to the intervals the records have (the resamples of
    :func:`odin_pl.protocol.bootstrap.with_intervals`: per set, seeded by the plan's seed and its name)."""
    if resamples < 2:
        raise UserError(f"the bootstrap needs at least 2 resamples, got {resamples} (0 turns it off)")
    samples: dict[tuple[str, str], dict[str, Tensor]] = {}  # (set, method) -> metric -> [B]
    for name, by_key in result.ood_test_scores.items():
        n_out = len(next(iter(by_key.values())))
        n_in = len(next(iter(result.in_test_scores.values())))
        in_indices, out_indices = resample_indices(n_in, n_out, resamples, bootstrap_seed(result.plan.seed, name))
        for (method, setting), out_scores in by_key.items():
            samples[name, method] = resampled_metrics(result.in_test_scores[method, setting], out_scores, in_indices,
                                                      out_indices, rows_of=openood_metric_rows)

    def fields(values: Mapping[str, Tensor]) -> dict[str, float]:
        out = {}
        for metric, tensor in values.items():
            out[f"{PREFIX}{metric}_ci_low"], out[f"{PREFIX}{metric}_ci_high"] = percentile_interval(tensor, level)
        return out

    records = [record.with_intervals({**record.intervals, **fields(samples[record.ood, record.method])})
               for record in result.records]
    groups = [replace(g, intervals=fields({metric: sum(samples[n, g.method][metric] for n in g.members)
                                           / len(g.members) for metric in OPENOOD_METRIC_NAMES}))
              for g in result.group_records]
    return replace(result, records=records, group_records=groups)
