"""FPR at 95% TPR against the size of the OOD tuning set (paper, appendix H, Figure 15).

Each OOD set is split into 2,000 tuning and 8,000 test images (a set of fewer than 10,000 images: a fifth and the
rest, up to 8,000). (T, epsilon) is chosen on its first 200, 400, ..., 2,000 tuning images (a tenth, two tenths, ...
of a smaller tuning split) with the protocol's rule, and FPR at 95% TPR is measured on its fixed test split. As in
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
from odin_pl.analyses.score_cache import ScoreCache
from odin_pl.metrics import rates_at_tpr
from odin_pl.protocol import MSP, score_dataset
from odin_pl.tuning import select_parameters

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
    cache = ScoreCache(len(dataset), lambda indices, settings: score_dataset(
        ctx.model, Subset(dataset, indices.tolist()), settings, input_std=ctx.input_std, batch_size=ctx.batch_size,
        device=ctx.device))
    odin_tuning = ctx.result.tuning_scores.get("odin", {})
    if name in odin_tuning:
        cache.add(_protocol_indices(ctx, name), ctx.grid.settings, odin_tuning[name])
    if name == IN:  # MSP's scores are ODIN's at (T, epsilon) = (1, 0)
        tested = {MSP: ctx.result.in_test_scores["msp", ()],
                  **{s: t for (method, s), t in ctx.result.in_test_scores.items() if method == "odin"}}
    else:
        odin = ctx.reported()[name][1]
        scores = ctx.result.test_scores[name]
        tested = {MSP: scores["msp"][1], (odin["temperature"], odin["epsilon"]): scores["odin"][1]}
    cache.add(ctx.test_indices(name), list(tested), torch.stack(list(tested.values())))
    return cache


def run(ctx: AnalysisContext) -> AnalysisOutput:
    grid = ctx.grid
    caches = {name: _cache(ctx, name) for name in [IN, *ctx.ood_datasets]}
    splits = {name: appendix_h_split(len(ctx.dataset(name)), _protocol_indices(ctx, name),
                                     ctx.seed_for(name, "tuning-size")) for name in ctx.ood_datasets}
    in_tune, in_test = _protocol_indices(ctx, IN), ctx.test_indices(IN)
    in_grid = caches[IN].get(in_tune, grid.settings)
    chosen = {}
    for name, (tune, _) in splits.items():
        out_grid = caches[name].get(tune, grid.settings)
        chosen[name] = [select_parameters(grid, in_grid, out_grid[:, :k]) for k in tuning_sizes(len(tune))]
    settings = {name: list(dict.fromkeys([MSP, *((s.temperature, s.epsilon) for s in chosen[name])]))
                for name in chosen}
    in_settings = list(dict.fromkeys(s for values in settings.values() for s in values))
    in_scores = dict(zip(in_settings, caches[IN].get(in_test, in_settings)))
    sets = {}
    for name, selections in chosen.items():
        tune, test = splits[name]
        out_scores = dict(zip(settings[name], caches[name].get(test, settings[name])))
        fpr = {setting: rates_at_tpr(in_scores[setting], scores)[1] for setting, scores in out_scores.items()}
        sets[name] = {"n": len(ctx.dataset(name)), "n_tune": len(tune), "n_test": len(test),
                      "tuning_sizes": tuning_sizes(len(tune)),
                      "temperature": [s.temperature for s in selections], "epsilon": [s.epsilon for s in selections],
                      "fpr_at_95_tpr": [fpr[s.temperature, s.epsilon] for s in selections],
                      "baseline_fpr_at_95_tpr": fpr[MSP]}
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
    for name, values in sets.items():
        line, = ax.plot(values["tuning_sizes"], [100 * v for v in values["fpr_at_95_tpr"]], "o-", ms=3, label=name)
        ax.axhline(100 * values["baseline_fpr_at_95_tpr"], color=line.get_color(), ls=":", lw=0.8)
    ax.set(xlabel="OOD tuning images", ylabel="FPR at 95% TPR (%)", title="ODIN vs tuning set size (dotted: MSP)")
    ax.legend(fontsize=7)
    return fig
