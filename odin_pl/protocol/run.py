"""The evaluation protocol of the paper (section 4.4) over data sets: split, tune each method's setting, report.

Modes (:class:`~odin_pl.protocol.plan.ProtocolPlan`):
* ``paper``    - per OOD set, tune on its held-out tuning split (and the shared in-distribution one);
* ``transfer`` - tune once on ``tune_on`` (an OOD set's tuning split, or a set given only for tuning, such as
  synthetic noise) and report every set with that setting (paper, appendix H);
* ``cross``    - tune on every OOD set and report every set with every set's setting (paper, tables 10 and 11);
  the main table uses each set's own tuning, as ``paper`` does;
* ``fixed``    - use each method's fixed setting, no tuning.
The modes apply to every method of the plan: each method with more than one setting is tuned on the same splits by
the same rule, and all are reported on the same seeded test splits. Scoring passes are shared: the in-distribution
tuning split is scored over every method's grid once for all OOD sets (one forward pass per batch for all methods),
and its test split once for the union of chosen settings.

One run: ``run_protocol(plan, in_dataset, ood_datasets, scorer, cache)``; the :class:`Scorer` (built once with the
model, device, batch size, workers and fits: :class:`ModelScorer`) scores a data set for a :data:`Plan` of methods
and settings, and the :class:`ScoreCache` (``odin_pl.evaluation.score_store.ScoreStore``) keeps and gives back the
scores of every pass, so that a stopped run resumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from odin_pl.distributed import agree_on_failure, broadcast_from_zero, gather_shards, shard_indices, world
from odin_pl.errors import UserError
from odin_pl.methods import Plan, Setting, score_batch
from odin_pl.methods.batch import StdLike, check_model_in_eval, non_finite_error
from odin_pl.methods.features import Fits
from odin_pl.metrics import ood_metrics
from odin_pl.protocol.plan import ProtocolPlan
from odin_pl.protocol.records import ProtocolResult, Record
from odin_pl.protocol.tuning import PAPER_TUNING_SIZE, SetSplit, select_setting, split_seed
from odin_pl.progress import with_progress

IN_DISTRIBUTION = "in_distribution"
Span = tuple[int, int]  # images [start, stop) of a split
Scores = dict[str, Tensor]  # method -> [len(settings), n]


def score_plan(
    model: nn.Module, dataset: Dataset, plan: Plan, *, input_std: StdLike = None, batch_size: int = 256,
    num_workers: int = 0, device: str | torch.device | None = None, forward_batch_size: int | None = None,
    desc: str | None = None, progress: bool = False, fits: Fits | None = None,
    done: Mapping[Span, Scores] | None = None, on_range: Callable[[int, int, Scores], None] | None = None,
    seed: int = 0,
) -> Scores:
    """Scores [len(settings), len(dataset)] (on the CPU) per method of ``plan`` of every image of a data set
    yielding (image, label); one forward pass per batch serves all methods (``fits``: those of the fitted ones).

    The images are scored in ranges [start, stop) of ``batch_size`` images per process, in index order; in a
    process group each process scores its share of a range (start + rank, start + rank + W, ...) and all get the
    gathered scores, handed to ``on_range(start, stop, scores)`` as each range is done. ``done``: scores of
    disjoint ranges computed before (a resumed pass; the same on every process), used as they are. A NaN or
    infinite score stops the pass at its range with a NonFiniteScoresError naming ``desc``, on every process;
    ``progress``: a progress bar (process 0). Stochastic passes are seeded from ``seed`` (the run's) and the first
    global index of each process's batch, so that a batch's scores do not depend on what was scored before it.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    rank, world_size = world()
    parts = dict(done or {})
    todo = missing_ranges(len(dataset), parts, batch_size * world_size)
    shares = [[start + i for i in shard_indices(stop - start, rank, world_size)] for start, stop in todo]
    loader = iter(DataLoader(dataset, batch_sampler=[share for share in shares if share], num_workers=num_workers))
    for (start, stop), share in with_progress(list(zip(todo, shares)), desc, enabled=progress and rank == 0):
        local, error = {name: torch.empty(len(settings), 0, dtype=dtype) for name, settings in plan.items()}, None
        if share:
            images = next(loader)[0].to(device=device, dtype=dtype, non_blocking=True)
            local = score_batch(model, images, plan, input_std, forward_batch_size, fits, seed=seed, start=share[0])
            error = non_finite_error(local, desc or "scoring", plan)
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


class Scorer(Protocol):
    """Scores a data set for a plan (method -> settings): [len(settings), len(dataset)] per method, on the CPU; see
    :func:`score_plan` for ``done`` and ``on_range``."""

    def __call__(self, dataset: Dataset, plan: Plan, *, desc: str, done: Mapping[Span, Scores] | None = None,
                 on_range: Callable[[int, int, Scores], None] | None = None) -> Scores: ...


@dataclass(frozen=True)
class ModelScorer:
    """The :class:`Scorer` of one eval-mode model (checked once): :func:`score_plan` with its input std, batch size,
    workers, device, fits (those of the methods with ``needs_fit``, ``odin_pl.protocol.fits.prepare_fits``) and
    the run seed of the stochastic passes."""

    model: nn.Module
    input_std: StdLike = None
    batch_size: int = 256
    num_workers: int = 0
    device: str | torch.device | None = None
    fits: Fits | None = None
    progress: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        check_model_in_eval(self.model)
        if self.batch_size < 1:
            raise UserError(f"the batch size must be >= 1, got {self.batch_size}")

    def __call__(self, dataset: Dataset, plan: Plan, *, desc: str, done: Mapping[Span, Scores] | None = None,
                 on_range: Callable[[int, int, Scores], None] | None = None) -> Scores:
        return score_plan(self.model, dataset, plan, input_std=self.input_std, batch_size=self.batch_size,
                          num_workers=self.num_workers, device=self.device, desc=desc, progress=self.progress,
                          fits=self.fits, done=done, on_range=on_range, seed=self.seed)


class ScoreCache(Protocol):
    """Where the scores of each pass (set, split, plan) are kept: ``load`` gives the saved scores of the whole pass
    (None: score it), ``load_ranges`` those of ranges of a stopped pass, ``save`` / ``save_range`` keep them as they
    are computed. An implementation must check that saved scores come from the same model, data and split."""

    def load(self, name: str, split: str, plan: Plan) -> Scores | None: ...

    def save(self, name: str, split: str, plan: Plan, scores: Mapping[str, Tensor]) -> None: ...

    def load_ranges(self, name: str, split: str, plan: Plan, n: int) -> dict[Span, Scores]: ...

    def save_range(self, name: str, split: str, plan: Plan, start: int, stop: int,
                   scores: Mapping[str, Tensor]) -> None: ...


def score_pass(scorer: Scorer, cache: ScoreCache | None, name: str, split: str, dataset: Dataset, plan: Plan) -> Scores:
    """One pass: the cache's saved scores (asked by process 0 alone, sent to the others), else scored (resuming
    from its saved ranges) and saved by process 0 as it goes."""
    lead = world()[0] == 0
    saved = broadcast_from_zero(cache.load(name, split, plan) if lead else None) if cache is not None else None
    if saved is not None:
        expected = {m: (len(s), len(dataset)) for m, s in plan.items()}
        shapes = {m: tuple(t.shape) for m, t in saved.items()}
        if shapes != expected:
            raise UserError(f"the saved scores of {name}/{split} have shapes {shapes}; expected {expected}")
        return saved
    done = broadcast_from_zero(cache.load_ranges(name, split, plan, len(dataset)) if lead else None) \
        if cache is not None else None
    keep = cache is not None and lead

    def on_range(start: int, stop: int, scores: Scores) -> None:
        cache.save_range(name, split, plan, start, stop, scores)

    total = sum(len(s) for s in plan.values())
    scores = scorer(dataset, plan, desc=f"{name}/{split} ({total} settings)", done=done,
                    on_range=on_range if keep else None)
    if keep:
        cache.save(name, split, plan, scores)
    return scores


def run_protocol(plan: ProtocolPlan, in_dataset: Dataset, ood_datasets: Mapping[str, Dataset], scorer: Scorer,
                 cache: ScoreCache | None = None, *, tuning_only: Mapping[str, Dataset] | None = None
                 ) -> ProtocolResult:
    """Run the protocol ``plan`` on the in-distribution set and the OOD sets (``tuning_only``: sets used only to
    tune on, in transfer mode), scoring every pass with ``scorer`` through ``cache`` (None: nothing kept).

    In a process group every process scores its shard; only process 0 asks and feeds the cache, and sends what it
    loaded to the others.
    """
    if plan.mode == "openood":
        raise UserError("mode 'openood' is OpenOOD v1.5's protocol: run it with odin_pl.protocol.openood.run_openood")
    if not ood_datasets:
        raise UserError("no OOD set to evaluate: give at least one")
    tuning_only = dict(tuning_only or {})
    for name, dataset in [("in-distribution set", in_dataset), *ood_datasets.items(), *tuning_only.items()]:
        if len(dataset) == 0:
            raise UserError(f"{name!r} is empty: nothing to evaluate (check its folder or image count)")
    if plan.mode == "transfer" and plan.tune_on not in ood_datasets and plan.tune_on not in tuning_only:
        raise UserError(f"tune_on={plan.tune_on!r} is not one of the evaluated sets "
                        f"{sorted([*ood_datasets, *tuning_only])}")
    mode, methods = plan.mode, plan.methods
    result = ProtocolResult(plan)

    def score(name: str, split: str, dataset: Dataset, scored: Plan) -> Scores:
        return score_pass(scorer, cache, name, split, dataset, scored)

    in_split = SetSplit.make(len(in_dataset), split_seed(plan.seed, "in"), plan.n_tune)
    splits = {name: SetSplit.make(len(ds), split_seed(plan.seed, name), plan.n_tune)
              for name, ds in ood_datasets.items()}
    result.splits = {IN_DISTRIBUTION: in_split, **splits}
    for name, split in result.splits.items():
        if split.halved:
            result.notes.append(f"{name} has only {split.n} images: half of it ({len(split.tune)}) is used for "
                                f"tuning instead of {PAPER_TUNING_SIZE}")

    # 1. Tuning: per tuned method, a setting per OOD set (paper, cross), one for all (transfer); none in fixed mode.
    tuned = plan.tuned
    if tuned:
        tuning_plan = {m.name: list(m.settings) for m in tuned}
        in_tune = score(IN_DISTRIBUTION, "tune", Subset(in_dataset, in_split.tune.tolist()), tuning_plan)
        for m in tuned:
            result.tuning_scores[m.name] = {IN_DISTRIBUTION: in_tune[m.name]}
            result.selections[m.name] = {}
        for name in [plan.tune_on] if mode == "transfer" else list(ood_datasets):
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
        tunings = {"paper": [name], "transfer": [plan.tune_on],
                   "cross": [name, *(t for t in ood_datasets if t != name)]}
        reported[name] = {m.name: ([(t, result.selections[m.name][t].setting) for t in tunings[mode]]
                                   if m in tuned else [(None, m.fixed if mode == "fixed" else m.settings[0])])
                          for m in methods}

    # 2. Test splits: the in-distribution one once for every setting needed, then each OOD set.
    def test_plan(names: Sequence[str]) -> dict[str, list[Setting]]:
        return {m.name: list(dict.fromkeys(s for n in names for _, s in reported[n][m.name])) for m in methods}

    in_plan = test_plan(list(ood_datasets))
    in_test = score(IN_DISTRIBUTION, "test", Subset(in_dataset, in_split.test.tolist()), in_plan)
    result.in_test_scores = by_setting(in_plan, in_test)
    for name, dataset in ood_datasets.items():
        set_plan = test_plan([name])
        out_test = by_setting(set_plan, score(name, "test", Subset(dataset, splits[name].test.tolist()), set_plan))
        result.ood_test_scores[name] = out_test
        for m in methods:
            for tuned_on, setting in reported[name][m.name]:
                selection = result.selections[m.name][tuned_on] if tuned_on is not None else None
                result.records.append(Record(
                    ood=name, method=m.name, setting=setting, params=m.method.named(setting),
                    metrics=ood_metrics(result.in_test_scores[m.name, setting], out_test[m.name, setting]),
                    n_in=len(in_split.test), n_out=len(splits[name].test), tuned_on=tuned_on,
                    tuning_fpr=selection.tuning_fpr if selection else None,
                    grid_edge=selection.edge_note if selection else None))
    return result


def by_setting(plan: Plan, scores: Scores) -> dict[tuple[str, Setting], Tensor]:
    """A pass's scores per (method, setting)."""
    return {(m, s): scores[m][row] for m, settings in plan.items() for row, s in enumerate(settings)}
