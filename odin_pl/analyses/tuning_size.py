"""FPR at 95% TPR against the size of the OOD tuning set (paper, appendix H, Figure 15).

Each OOD set is split into 2,000 tuning and 8,000 test images (a set of fewer than 10,000 images: a fifth and the
rest, up to 8,000). Each tuned method's setting (ODIN's (T, epsilon)) is chosen on its first 200, 400, ..., 2,000
tuning images (a tenth, two tenths, ... of a smaller tuning split) with the protocol's rule, and FPR at 95% TPR is
measured on its fixed test split (with the MSP baseline's, when the run has it). As in
the paper ("for each out-of-distribution dataset, we choose the tuning set size"), only the OOD tuning set grows:
the in-distribution side is the protocol's, its tuning split for the selections and its test split for the
threshold. The OOD tuning images contain the protocol's tuning split, or lie inside it, and the test images lie in
its test split, so the protocol's scores are reused; only missing (image, setting) pairs are scored.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from torch import Tensor
from torch.utils.data import Subset

from odin_pl.analyses.context import IN, AnalysisContext, AnalysisOutput
from odin_pl.analyses.score_cache import Key, ScoreCache, key
from odin_pl.metrics import rates_at_tpr
from odin_pl.protocol.run import score_plan
from odin_pl.protocol.tuning import select_setting

PAPER_TUNE, PAPER_TEST, STEPS = 2000, 8000, 10


def appendix_h_split(n: int, protocol_tune: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """(tuning indices in seeded random order, test indices): min(2000, n // 5) and then up to 8000 images.

    All n indices are put in one seeded random order that starts with the protocol's tuning images, so that any
    prefix is a random subset and the tuning split contains the protocol's (or lies inside it).
    """
    g = torch.Generator().manual_seed(seed)
    rest = torch.ones(n, dtype=torch.bool)
    rest[protocol_tune] = False
    rest = rest.nonzero().flatten()
    order = torch.cat([protocol_tune[torch.randperm(len(protocol_tune), generator=g)],
                       rest[torch.randperm(len(rest), generator=g)]])
    n_tune = max(1, min(PAPER_TUNE, n // 5))
    return order[:n_tune], order[n_tune:n_tune + PAPER_TEST]


def tuning_sizes(n_tune: int) -> list[int]:
    """A tenth, two tenths, ..., all of the tuning split (200, 400, ..., 2000 for the paper's)."""
    return [max(1, round(k * n_tune / STEPS)) for k in range(1, STEPS + 1)]


def _protocol_indices(ctx: AnalysisContext, name: str) -> Tensor:
    return torch.as_tensor(ctx.result.splits[name]["tune_indices"], dtype=torch.long)


def _cache(ctx: AnalysisContext, name: str) -> ScoreCache:
    """A score cache of a set, holding the protocol's grid scores (tuning split) and test-split scores."""
    dataset = ctx.dataset(name)

    def scorer(indices: Tensor, keys: list[Key]) -> Tensor:
        plan: dict[str, list] = {}
        for method, setting in keys:
            plan.setdefault(method, []).append(setting)
        scores = score_plan(ctx.model, Subset(dataset, indices.tolist()), plan, input_std=ctx.input_std,
                            batch_size=ctx.batch_size, device=ctx.device, fits=ctx.fits)
        return torch.stack([scores[method][plan[method].index(setting)] for method, setting in keys])

    cache = ScoreCache(len(dataset), scorer)
    for grid in ctx.result.methods:
        if name in ctx.result.tuning_scores.get(grid.name, {}):
            cache.add(_protocol_indices(ctx, name), [key(grid.name, s) for s in grid.settings],
                      ctx.result.tuning_scores[grid.name][name])
    if name == IN:
        tested = {key(*k): scores for k, scores in ctx.result.in_test_scores.items()}
    else:
        tested = {key(*k): scores for k, scores in ctx.result.ood_test_scores[name].items()}
    cache.add(ctx.test_indices(name), list(tested), torch.stack(list(tested.values())))
    return cache


def run(ctx: AnalysisContext) -> AnalysisOutput:
    tuned = [grid for grid in ctx.result.methods if ctx.result.selections.get(grid.name)]
    if not tuned:
        return ctx.write("tuning-size", {"skipped": "no tuned method: the protocol ran with fixed parameters"}, None)
    baseline = [key("msp", ())] if any(g.name == "msp" for g in ctx.result.methods) else []
    caches = {name: _cache(ctx, name) for name in [IN, *ctx.ood_datasets]}
    splits = {name: appendix_h_split(len(ctx.dataset(name)), _protocol_indices(ctx, name),
                                     ctx.seed_for(name, "tuning-size")) for name in ctx.ood_datasets}
    in_tune, in_test = _protocol_indices(ctx, IN), ctx.test_indices(IN)
    chosen = {}  # set -> method -> selections per tuning size
    for grid in tuned:
        method, keys = grid.method, [key(grid.name, s) for s in grid.settings]
        in_grid = caches[IN].get(in_tune, keys)
        for name, (tune, _) in splits.items():
            out_grid = caches[name].get(tune, keys)
            chosen.setdefault(name, {})[grid.name] = [select_setting(method, grid.settings, in_grid, out_grid[:, :k])
                                                      for k in tuning_sizes(len(tune))]
    tested = {name: list(dict.fromkeys([*baseline, *(key(m, s.setting) for m, sel in by_method.items()
                                                     for s in sel)])) for name, by_method in chosen.items()}
    in_keys = list(dict.fromkeys(k for keys in tested.values() for k in keys))
    in_scores = dict(zip(in_keys, caches[IN].get(in_test, in_keys)))
    sets = {}
    for name, by_method in chosen.items():
        tune, test = splits[name]
        out_scores = dict(zip(tested[name], caches[name].get(test, tested[name])))
        fpr = {k: rates_at_tpr(in_scores[k], scores)[1] for k, scores in out_scores.items()}
        sets[name] = {"n": len(ctx.dataset(name)), "n_tune": len(tune), "n_test": len(test),
                      "tuning_sizes": tuning_sizes(len(tune)),
                      "methods": {m: {"params": [s.params for s in selections],
                                      "fpr_at_95_tpr": [fpr[key(m, s.setting)] for s in selections]}
                                  for m, selections in by_method.items()},
                      **({"baseline_fpr_at_95_tpr": fpr[baseline[0]]} if baseline else {})}
    scaled = [name for name, (tune, _) in splits.items() if len(tune) < PAPER_TUNE]
    data = {"split": "appendix H: 2,000 tuning / 8,000 test images per OOD set (seeded); the in-distribution "
                     "images are the protocol's tuning split (selection) and test split (threshold)",
            "in_distribution": {"n": len(ctx.dataset(IN)), "n_tune": len(in_tune), "n_test": len(in_test)},
            "notes": [f"{name} has {len(ctx.dataset(name))} images: its split is scaled down proportionally "
                      f"({len(splits[name][0])} tuning / {len(splits[name][1])} test)" for name in scaled],
            "newly_scored_pairs": {name: cache.computed for name, cache in caches.items()}, "sets": sets}
    return ctx.write("tuning-size", data, _figure(sets))


def _figure(sets: dict) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(5, 3.6))
    styles = ["o-", "s--", "^-.", "d:"]
    for name, values in sets.items():
        color = None
        for style, (method, curve) in zip(styles * 8, values["methods"].items()):
            line, = ax.plot(values["tuning_sizes"], [100 * v for v in curve["fpr_at_95_tpr"]], style, ms=3,
                            color=color, label=f"{name}: {method}")
            color = line.get_color()
        if "baseline_fpr_at_95_tpr" in values:
            ax.axhline(100 * values["baseline_fpr_at_95_tpr"], color=color, ls=":", lw=0.8)
    ax.set(xlabel="OOD tuning images", ylabel="FPR at 95% TPR (%)",
           title="FPR vs tuning set size (dotted: MSP baseline)")
    ax.legend(fontsize=7)
    return fig
