"""The evaluation protocol of the paper (section 4.4) over data sets: split, tune (T, epsilon), report.

Modes:
* ``paper``    - per OOD set, tune on its held-out tuning split (and the shared in-distribution one);
* ``transfer`` - tune once on ``tune_on`` (an OOD set's tuning split, or a set given only for tuning, such as
  synthetic noise) and report every set with that (T, epsilon) (paper, appendix H);
* ``cross``    - tune on every OOD set and report every set with every set's (T, epsilon) (paper, tables 10
  and 11); the main table uses each set's own tuning, as ``paper`` does;
* ``fixed``    - use the given (T, epsilon), no tuning.
Every mode reports on the same seeded test splits, and MSP (T=1, epsilon=0) is reported beside ODIN on them.
Scoring passes are shared: the in-distribution tuning split is scored over the grid once for all OOD sets, and
its test split once for the union of chosen settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from odin_pl.distributed import broadcast_from_zero, gather_shards, shard_indices, world
from odin_pl.metrics import ood_metrics
from odin_pl.scoring import StdLike, check_epsilon, check_model_in_eval, check_temperature, score_settings
from odin_pl.tuning import PAPER_TUNING_SIZE, Grid, Selection, select_parameters, split_indices, tuning_size

Setting = tuple[float, float]
MSP: Setting = (1.0, 0.0)
ScoresHook = Callable[[str, str, Sequence[Setting], Tensor], None]
ScoresLoader = Callable[[str, str, Sequence[Setting]], Tensor | None]


def score_dataset(
    model: nn.Module, dataset: Dataset, settings: Sequence[Setting], *, input_std: StdLike = None,
    batch_size: int = 256, num_workers: int = 0, device: str | torch.device | None = None,
    forward_batch_size: int | None = None, desc: str | None = None,
) -> Tensor:
    """Scores [len(settings), len(dataset)] (on the CPU) of every image of a data set yielding (image, label).

    In a process group, each process scores its own shard and all get the gathered scores in dataset order.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    rank, world_size = world()
    shard = Subset(dataset, shard_indices(len(dataset), rank, world_size)) if world_size > 1 else dataset
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    chunks = []
    for images, _ in tqdm(loader, desc=desc, disable=desc is None or rank > 0, leave=False):
        images = images.to(device=device, dtype=dtype, non_blocking=True)
        chunks.append(score_settings(model, images, settings, input_std, forward_batch_size).cpu())
    if len(dataset) == 0:
        raise ValueError(f"{desc or 'the data set'} is empty: nothing to score")
    local = torch.cat(chunks, dim=1) if chunks else torch.empty(len(settings), 0, dtype=dtype)
    return gather_shards(local, len(dataset))


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
    """One record per OOD set and method, the selections, the splits, notes for the user, the test-split scores
    per OOD set and method as (in-distribution, OOD) pairs, and the tuning splits' scores over the whole grid
    ([len(grid.settings), n] per set, ``in_distribution`` included), and the in-distribution test split's scores
    per setting reported on it."""

    records: list[dict] = field(default_factory=list)
    test_scores: dict[str, dict[str, tuple[Tensor, Tensor]]] = field(default_factory=dict)
    tuning_scores: dict[str, Tensor] = field(default_factory=dict)
    in_test_scores: dict[Setting, Tensor] = field(default_factory=dict)
    selections: dict[str, Selection] = field(default_factory=dict)
    splits: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


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
) -> ProtocolResult:
    """Run the protocol; ``on_scores(set, split, settings, scores)`` sees every score tensor as it is computed.

    ``load_scores(set, split, settings)``, asked before each scoring pass, may return saved scores
    [len(settings), n] of exactly that split to use instead (to resume a run); it must check that they come from
    the same model, data and split. In a process group only process 0 asks, and sends what it got to the
    others; loaded scores skip ``on_scores``.
    """
    check_model_in_eval(model)
    if not ood_datasets:
        raise ValueError("no OOD set to evaluate: give at least one")
    tuning_only = dict(tuning_only_datasets or {})
    for name, dataset in [("in-distribution set", in_dataset), *ood_datasets.items(), *tuning_only.items()]:
        if len(dataset) == 0:
            raise ValueError(f"{name!r} is empty: nothing to evaluate (check its folder or image count)")
    if mode == "fixed":
        if temperature is None or epsilon is None:
            raise ValueError("mode 'fixed' needs both temperature and epsilon")
        check_temperature(temperature)
        check_epsilon(epsilon)
    elif mode == "transfer":
        if tune_on not in ood_datasets and tune_on not in tuning_only:
            known = sorted([*ood_datasets, *tuning_only])
            raise ValueError(f"tune_on={tune_on!r} is not one of the evaluated sets {known}")
    elif mode not in ("paper", "cross"):
        raise ValueError(f"unknown mode {mode!r}; use 'paper', 'transfer', 'cross' or 'fixed'")

    result = ProtocolResult()

    def score(name: str, split: str, dataset: Dataset, settings: Sequence[Setting]) -> Tensor:
        if load_scores is not None:  # read by process 0 alone, sent to the others
            saved = broadcast_from_zero(load_scores(name, split, settings) if world()[0] == 0 else None)
            if saved is not None:
                if tuple(saved.shape) != (len(settings), len(dataset)):
                    raise ValueError(f"load_scores gave scores of shape {tuple(saved.shape)} for {name}/{split}; "
                                     f"expected {(len(settings), len(dataset))}")
                return saved
        scores = score_dataset(model, dataset, settings, input_std=input_std, batch_size=batch_size,
                               num_workers=num_workers, device=device,
                               desc=f"{name}/{split} ({len(settings)} settings)" if progress else None)
        if on_scores is not None:
            on_scores(name, split, settings, scores)
        return scores

    in_split = SetSplit.make(len(in_dataset), split_seed(seed, "in"), n_tune)
    splits = {name: SetSplit.make(len(ds), split_seed(seed, name), n_tune) for name, ds in ood_datasets.items()}
    result.splits = {"in_distribution": in_split.to_dict(), **{n: s.to_dict() for n, s in splits.items()}}
    for name, split in [("in_distribution", in_split), *splits.items()]:
        if split.halved:
            result.notes.append(f"{name} has only {split.n} images: half of it ({len(split.tune)}) is used for "
                                f"tuning instead of {PAPER_TUNING_SIZE}")

    # 1. Tuning: (T, epsilon) per OOD set (paper, cross), one for all (transfer), or given (fixed).
    if mode != "fixed":
        in_tune = score("in_distribution", "tune", Subset(in_dataset, in_split.tune.tolist()), grid.settings)
        result.tuning_scores["in_distribution"] = in_tune
        for name in [tune_on] if mode == "transfer" else list(ood_datasets):
            tune_set = tuning_only[name] if name in tuning_only else Subset(ood_datasets[name],
                                                                            splits[name].tune.tolist())
            result.tuning_scores[name] = score(name, "tune", tune_set, grid.settings)
            result.selections[name] = select_parameters(grid, in_tune, result.tuning_scores[name])
    # For each test set, the (tuned_on, setting) pairs to report; the first one is its main-table ODIN entry.
    reported: dict[str, list[tuple[str | None, Setting]]] = {}
    for name in ood_datasets:
        tuned = {"fixed": [None], "paper": [name], "transfer": [tune_on],
                 "cross": [name, *(t for t in ood_datasets if t != name)]}[mode]
        reported[name] = [(t, (float(temperature), float(epsilon)) if t is None else
                           (result.selections[t].temperature, result.selections[t].epsilon)) for t in tuned]

    # 2. Test splits: the in-distribution one once for every setting needed, then each OOD set.
    in_settings = list(dict.fromkeys([MSP, *(s for pairs in reported.values() for _, s in pairs)]))
    in_test = dict(zip(in_settings, score("in_distribution", "test", Subset(in_dataset, in_split.test.tolist()),
                                          in_settings)))
    result.in_test_scores = in_test
    for name, dataset in ood_datasets.items():
        settings = list(dict.fromkeys([MSP, *(s for _, s in reported[name])]))
        out_test = dict(zip(settings, score(name, "test", Subset(dataset, splits[name].test.tolist()), settings)))
        main_setting = reported[name][0][1]
        result.test_scores[name] = {"msp": (in_test[MSP], out_test[MSP]),
                                    "odin": (in_test[main_setting], out_test[main_setting])}
        for method, tuned_on, setting in [("msp", None, MSP), *(("odin", t, s) for t, s in reported[name])]:
            record = {"ood": name, "method": method, **ood_metrics(in_test[setting], out_test[setting]),
                      "temperature": setting[0], "epsilon": setting[1],
                      "n_in": len(in_split.test), "n_out": len(splits[name].test), "tuned_on": tuned_on}
            if tuned_on is not None:
                selection = result.selections[tuned_on]
                record.update(tuning_fpr_at_95_tpr=selection.tuning_fpr, grid_edge=selection.edge_note)
            result.records.append(record)
    return result
