"""The evaluation protocol of the paper (section 4.4) over data sets: split, tune (T, epsilon), report.

Modes:
* ``paper``    - per OOD set, tune on its held-out tuning split (and the shared in-distribution one);
* ``transfer`` - tune once on ``tune_on`` (an OOD set's tuning split, or a set given only for tuning, such as
  synthetic noise) and report every set with that (T, epsilon) (paper, appendix H);
* ``cross``    - tune on every OOD set and report every set with every set's (T, epsilon) (paper, tables 10
  and 11); the main table uses each set's own tuning, as ``paper`` does;
* ``fixed``    - use the given (T, epsilon), no tuning.
The modes apply to every method (``odin_pl.methods``; default: MSP, the baseline, and ODIN): each method with more
than one setting is tuned on the same splits by the same rule, and all are reported on the same seeded test splits.
Scoring passes are shared: the in-distribution tuning split is scored over every method's grid once for all OOD
sets (one forward pass per batch for all methods), and its test split once for the union of chosen settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Literal, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from odin_pl.distributed import agree_on_failure, broadcast_from_zero, gather_shards, shard_indices, world
from odin_pl.methods.features import Fits
from odin_pl.methods import Method, Plan, Setting, create_method, score_batch
from odin_pl.metrics import ood_metrics
from odin_pl.report.tables import main_records
from odin_pl.methods.batch import StdLike, check_model_in_eval, non_finite_error
from odin_pl.protocol.tuning import PAPER_TUNING_SIZE, Grid, Selection, select_setting, split_indices, tuning_size
from odin_pl.errors import UserError

MSP: Setting = (1.0, 0.0)  # ODIN's setting that equals the MSP baseline
ScoresHook = Callable[[str, str, Plan, dict[str, Tensor]], None]
ScoresLoader = Callable[[str, str, Plan], "dict[str, Tensor] | None"]
Span = tuple[int, int]
RangeHook = Callable[[str, str, Plan, int, int, dict[str, Tensor]], None]
RangesLoader = Callable[[str, str, Plan, int], dict[Span, dict[str, Tensor]]]


def score_plan(
    model: nn.Module, dataset: Dataset, plan: Plan, *, input_std: StdLike = None, batch_size: int = 256,
    num_workers: int = 0, device: str | torch.device | None = None, forward_batch_size: int | None = None,
    desc: str | None = None, fits: Fits | None = None, done: Mapping[Span, dict[str, Tensor]] | None = None,
    on_range: Callable[[int, int, dict[str, Tensor]], None] | None = None,
) -> dict[str, Tensor]:
    """Scores [len(settings), len(dataset)] (on the CPU) per method of ``plan`` of every image of a data set
    yielding (image, label); one forward pass per batch serves all methods (``fits``: those of the fitted ones).

    The images are scored in ranges [start, stop) of ``batch_size`` images per process, in index order; in a
    process group each process scores its share of a range (start + rank, start + rank + W, ...) and all get the
    gathered scores, handed to ``on_range(start, stop, scores)`` as each range is done. ``done``: scores of
    disjoint ranges computed before (a resumed pass; the same on every process), used as they are. A NaN or
    infinite score stops the pass at its range with a NonFiniteScoresError, on every process.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    rank, world_size = world()
    parts = dict(done or {})
    todo = missing_ranges(len(dataset), parts, batch_size * world_size)
    shares = [[start + i for i in shard_indices(stop - start, rank, world_size)] for start, stop in todo]
    loader = iter(DataLoader(dataset, batch_sampler=[share for share in shares if share], num_workers=num_workers))
    for (start, stop), share in tqdm(list(zip(todo, shares)), desc=desc, disable=desc is None or rank > 0,
                                     leave=False):
        local, error = {name: torch.empty(len(settings), 0, dtype=dtype) for name, settings in plan.items()}, None
        if share:
            images = next(loader)[0].to(device=device, dtype=dtype, non_blocking=True)
            local = score_batch(model, images, plan, input_std, forward_batch_size, fits)
            error = non_finite_error(local, desc or "scoring")
        agree_on_failure(error)  # at the first range with a NaN: no later work, on any process
        parts[(start, stop)] = {name: gather_shards(scores.cpu(), stop - start) for name, scores in local.items()}
        if on_range is not None:
            on_range(start, stop, parts[(start, stop)])
    if len(dataset) == 0:
        raise UserError(f"{desc or 'the data set'} is empty: nothing to score")
    return {name: torch.cat([parts[span][name] for span in sorted(parts)], dim=1) for name in plan}


def missing_ranges(n: int, done: Mapping[Span, Any], size: int) -> list[Span]:
    """The ranges of ``size`` images (fewer at the end of a gap) that cover range(n) outside the disjoint ranges
    ``done``, in order."""
    ranges, position = [], 0
    for start, stop in [*sorted(done), (n, n)]:
        if start < position or stop > n:
            raise ValueError(f"the scored ranges {sorted(done)} overlap or exceed the {n} images")
        ranges += [(a, min(a + size, start)) for a in range(position, start, size)]
        position = stop
    return ranges


def score_dataset(model: nn.Module, dataset: Dataset, settings: Sequence[Setting], **options: Any) -> Tensor:
    """ODIN's scores [len(settings), len(dataset)] for (T, epsilon) settings (see :func:`score_plan`)."""
    return score_plan(model, dataset, {"odin": settings}, **options)["odin"]


@dataclass(frozen=True)
class MethodGrid:
    """A method of a protocol run (created and checked once): the settings it is tuned over (its grid, in the
    product order of its parameters) and the one it uses in fixed mode (default: the grid's first in the method's
    tie order)."""

    method: Method
    settings: tuple[Setting, ...]
    fixed: Setting | None = None

    @property
    def name(self) -> str:
        return self.method.name

    @classmethod
    def of(cls, name: str, values: Mapping[str, Sequence[float]] | None = None,
           fixed: Sequence[float] | None = None) -> "MethodGrid":
        """The method's grid (its default values, or ``values`` per parameter) and fixed setting."""
        method = create_method(name)
        settings = tuple(method.grid(values))
        return cls(method, settings, method.check_setting(fixed) if fixed is not None else
                   min(settings, key=method.tie_key))

    @property
    def tuned(self) -> bool:
        return len(self.settings) > 1


def default_methods(grid: Grid = Grid(), temperature: float | None = None, epsilon: float | None = None
                    ) -> list[MethodGrid]:
    """The paper's pair: MSP (the baseline) and ODIN over ``grid`` (fixed mode: ``temperature``, ``epsilon``)."""
    fixed = (temperature, epsilon) if temperature is not None and epsilon is not None else None
    return [MethodGrid.of("msp"),
            MethodGrid.of("odin", {"temperature": grid.temperatures, "epsilon": grid.epsilons}, fixed)]


@dataclass
class SetSplit:
    """The seeded tuning / test split of one data set."""

    n: int
    seed: int
    tune: Tensor
    test: Tensor

    @classmethod
    def make(cls, n: int, seed: int, n_tune: int) -> "SetSplit":
        tune, test = split_indices(n, tuning_size(n, n_tune), seed)
        return cls(n, seed, tune, test)

    @property
    def halved(self) -> bool:
        return len(self.tune) < PAPER_TUNING_SIZE

    def to_dict(self) -> dict:
        return {"n": self.n, "seed": self.seed, "n_tune": len(self.tune), "n_test": len(self.test),
                "tune_indices": self.tune.tolist()}


@dataclass
class ProtocolResult:
    """What a protocol run found:

    * ``records``: per OOD set and method, the metrics on the test splits (one per tuning in cross mode);
    * ``tuning_scores``: per tuned method and set (``in_distribution`` included), the tuning split's scores over
      the method's grid [len(settings), n];
    * ``in_test_scores``: the in-distribution test split's scores per (method, setting) reported on it;
    * ``ood_test_scores``: per OOD set, its test split's scores per (method, setting) reported on it;
    * ``selections``: per tuned method and tuning set, the chosen setting;
    * ``methods``: the run's methods; ``splits``; ``notes`` for the user.

    :attr:`test_scores` views the test-split scores of each set's and method's main entry.
    """

    records: list[dict] = field(default_factory=list)
    tuning_scores: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    in_test_scores: dict[tuple[str, Setting], Tensor] = field(default_factory=dict)
    ood_test_scores: dict[str, dict[tuple[str, Setting], Tensor]] = field(default_factory=dict)
    selections: dict[str, dict[str, Selection]] = field(default_factory=dict)
    methods: list[MethodGrid] = field(default_factory=list)

    @property
    def test_scores(self) -> dict[str, dict[str, tuple[Tensor, Tensor]]]:
        """Per OOD set and method, the (in-distribution, OOD) test-split scores of its main-table entry."""
        views: dict[str, dict[str, tuple[Tensor, Tensor]]] = {}
        for name, records in main_records(self.records).items():
            for method, record in records.items():
                key = (method, record_setting(record))
                views.setdefault(name, {})[method] = (self.in_test_scores[key], self.ood_test_scores[name][key])
        return views
    splits: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def record_setting(record: Mapping[str, Any]) -> Setting:
    """The setting of a result record: its method's parameters, in order, from the record's fields."""
    return tuple(float(record[p.name]) for p in create_method(record["method"]).params)


def split_seed(seed: int, name: str) -> int:
    """A per-set seed that is stable across runs and Python processes."""
    return seed * 1_000_003 + sum((i + 1) * ord(c) for i, c in enumerate(name))


def run_protocol(
    model: nn.Module,
    in_dataset: Dataset,
    ood_datasets: Mapping[str, Dataset],
    *,
    input_std: StdLike = None,
    mode: Literal["paper", "transfer", "cross", "fixed"] = "paper",
    methods: Sequence[MethodGrid] | None = None,
    grid: Grid = Grid(),
    tune_on: str | None = None,
    tuning_only_datasets: Mapping[str, Dataset] | None = None,
    temperature: float | None = None,
    epsilon: float | None = None,
    n_tune: int = PAPER_TUNING_SIZE,
    seed: int = 0,
    batch_size: int = 256,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    on_scores: ScoresHook | None = None,
    load_scores: ScoresLoader | None = None,
    on_range: RangeHook | None = None,
    load_ranges: RangesLoader | None = None,
    fits: Fits | None = None,
) -> ProtocolResult:
    """Run the protocol for ``methods`` (default: MSP and ODIN over ``grid``, fixed mode at ``temperature`` and
    ``epsilon``); ``on_scores(set, split, plan, scores)`` sees every pass's scores as they are computed. ``fits``:
    the fits of the methods that need one (``odin_pl.protocol.fits.prepare_fits``).

    ``load_scores(set, split, plan)``, asked before each scoring pass, may return saved scores (per method,
    [len(settings), n]) of exactly that split to use instead (to resume a run); it must check that they come from
    the same model, data and split. In a process group only process 0 asks, and sends what it got to the
    others; loaded scores skip ``on_scores``.
    """
    check_model_in_eval(model)
    if methods is None:
        if mode == "fixed" and None in (temperature, epsilon):
            raise UserError("mode 'fixed' needs both temperature and epsilon")
        methods = default_methods(grid, temperature, epsilon)
    methods = list(methods)
    if not methods:
        raise UserError("no method to evaluate: give at least one (see odin_pl.methods.list_methods())")
    if not ood_datasets:
        raise UserError("no OOD set to evaluate: give at least one")
    tuning_only = dict(tuning_only_datasets or {})
    for name, dataset in [("in-distribution set", in_dataset), *ood_datasets.items(), *tuning_only.items()]:
        if len(dataset) == 0:
            raise UserError(f"{name!r} is empty: nothing to evaluate (check its folder or image count)")
    if mode == "transfer":
        if tune_on not in ood_datasets and tune_on not in tuning_only:
            known = sorted([*ood_datasets, *tuning_only])
            raise UserError(f"tune_on={tune_on!r} is not one of the evaluated sets {known}")
    elif mode not in ("paper", "cross", "fixed"):
        raise UserError(f"unknown mode {mode!r}; use 'paper', 'transfer', 'cross' or 'fixed'")

    result = ProtocolResult(methods=methods)

    def score(name: str, split: str, dataset: Dataset, plan: dict[str, list[Setting]]) -> dict[str, Tensor]:
        if load_scores is not None:  # read by process 0 alone, sent to the others
            saved = broadcast_from_zero(load_scores(name, split, plan) if world()[0] == 0 else None)
            if saved is not None:
                expected = {m: (len(s), len(dataset)) for m, s in plan.items()}
                shapes = {m: tuple(t.shape) for m, t in saved.items()}
                if shapes != expected:
                    raise UserError(f"load_scores gave scores of shapes {shapes} for {name}/{split}; "
                                    f"expected {expected}")
                return saved
        done = (broadcast_from_zero(load_ranges(name, split, plan, len(dataset)) if world()[0] == 0 else None)
                if load_ranges is not None else None)
        total = sum(len(s) for s in plan.values())
        scores = score_plan(model, dataset, plan, input_std=input_std, batch_size=batch_size,
                            num_workers=num_workers, device=device,
                            desc=f"{name}/{split} ({total} settings)" if progress else None, fits=fits, done=done,
                            on_range=partial(on_range, name, split, plan) if on_range is not None else None)
        if on_scores is not None:
            on_scores(name, split, plan, scores)
        return scores

    in_split = SetSplit.make(len(in_dataset), split_seed(seed, "in"), n_tune)
    splits = {name: SetSplit.make(len(ds), split_seed(seed, name), n_tune) for name, ds in ood_datasets.items()}
    result.splits = {"in_distribution": in_split.to_dict(), **{n: s.to_dict() for n, s in splits.items()}}
    for name, split in [("in_distribution", in_split), *splits.items()]:
        if split.halved:
            result.notes.append(f"{name} has only {split.n} images: half of it ({len(split.tune)}) is used for "
                                f"tuning instead of {PAPER_TUNING_SIZE}")

    # 1. Tuning: per tuned method, a setting per OOD set (paper, cross), one for all (transfer); none in fixed mode.
    tuned = [m for m in methods if m.tuned] if mode != "fixed" else []
    if tuned:
        tuning_plan = {m.name: list(m.settings) for m in tuned}
        in_tune = score("in_distribution", "tune", Subset(in_dataset, in_split.tune.tolist()), tuning_plan)
        for m in tuned:
            result.tuning_scores[m.name] = {"in_distribution": in_tune[m.name]}
            result.selections[m.name] = {}
        for name in [tune_on] if mode == "transfer" else list(ood_datasets):
            tune_set = tuning_only[name] if name in tuning_only else Subset(ood_datasets[name],
                                                                            splits[name].tune.tolist())
            out_tune = score(name, "tune", tune_set, tuning_plan)
            for m in tuned:
                result.tuning_scores[m.name][name] = out_tune[m.name]
                result.selections[m.name][name] = select_setting(m.method, m.settings, in_tune[m.name],
                                                                 out_tune[m.name])
    # For each test set and method, the (tuned_on, setting) pairs to report; the first is its main-table entry.
    reported: dict[str, dict[str, list[tuple[str | None, Setting]]]] = {}
    for name in ood_datasets:
        tunings = {"paper": [name], "transfer": [tune_on], "cross": [name, *(t for t in ood_datasets if t != name)]}
        reported[name] = {m.name: ([(t, result.selections[m.name][t].setting) for t in tunings[mode]]
                                   if m in tuned else [(None, m.fixed if mode == "fixed" else m.settings[0])])
                          for m in methods}

    # 2. Test splits: the in-distribution one once for every setting needed, then each OOD set.
    def test_plan(names: Sequence[str]) -> dict[str, list[Setting]]:
        return {m.name: list(dict.fromkeys(s for n in names for _, s in reported[n][m.name])) for m in methods}

    in_plan = test_plan(list(ood_datasets))
    in_test = score("in_distribution", "test", Subset(in_dataset, in_split.test.tolist()), in_plan)
    result.in_test_scores = {(m, s): in_test[m][row] for m, settings in in_plan.items()
                             for row, s in enumerate(settings)}
    for name, dataset in ood_datasets.items():
        plan = test_plan([name])
        scores = score(name, "test", Subset(dataset, splits[name].test.tolist()), plan)
        out_test = {(m, s): scores[m][row] for m, settings in plan.items() for row, s in enumerate(settings)}
        result.ood_test_scores[name] = out_test
        for m in methods:
            method = m.method
            for tuned_on, setting in reported[name][m.name]:
                key = (m.name, setting)
                record = {"ood": name, "method": m.name, **ood_metrics(result.in_test_scores[key], out_test[key]),
                          **method.named(setting), "n_in": len(in_split.test), "n_out": len(splits[name].test),
                          "tuned_on": tuned_on}
                if tuned_on is not None:
                    selection = result.selections[m.name][tuned_on]
                    record.update(tuning_fpr_at_95_tpr=selection.tuning_fpr, grid_edge=selection.edge_note)
                result.records.append(record)
    return result
