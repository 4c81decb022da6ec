"""OOD detection metrics with in-distribution as the positive class (paper, section 4.3).

Scores: higher = more in-distribution. With S_in, S_out and a threshold delta,
TPR(delta) = mean(S_in >= delta) and FPR(delta) = mean(S_out >= delta).

* delta*            = the ceil(0.95 n_in)-th largest in-distribution score (largest delta with TPR >= 0.95)
* fpr_at_95_tpr     = FPR(delta*)  (no interpolation; ties count as accepted)
* detection_error   = 0.5 (1 - TPR(delta*)) + 0.5 FPR(delta*)
* auroc             = area under the ROC curve (ties count one half)
* aupr_in / aupr_out = average precision with in-distribution (scores) / OOD (negated scores) positive
* fpr_at_95_tpr_ood_positive = the same FPR with OOD positive and -score (what OpenOOD and pytorch-ood call FPR95)

Everything is computed in float64 and returned as fractions in [0, 1].
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

METRIC_NAMES = ("fpr_at_95_tpr", "detection_error", "auroc", "aupr_in", "aupr_out", "fpr_at_95_tpr_ood_positive")


def _as_scores(scores: Any, name: str) -> Tensor:
    t = torch.as_tensor(scores).detach().to("cpu", torch.float64).flatten()
    if t.numel() == 0:
        raise ValueError(f"{name} is empty: an OOD metric needs at least one in-distribution and one OOD score "
                         "(check that the data set is not empty)")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf; scores must be finite")
    return t


def threshold_at_tpr(in_scores: Tensor, tpr: float = 0.95) -> float:
    """The largest delta with mean(in_scores >= delta) >= tpr: the ceil(tpr * n)-th largest score."""
    frac = Fraction(tpr).limit_denominator(10**6)
    if not 0 < frac <= 1:
        raise ValueError(f"tpr must lie in (0, 1], got {tpr}")
    n = in_scores.numel()
    k = -(-frac.numerator * n // frac.denominator)  # exact ceil(tpr * n), no float rounding
    return float(torch.sort(in_scores, descending=True).values[k - 1])


def rates_at_tpr(in_scores: Any, out_scores: Any, tpr: float = 0.95) -> tuple[float, float, float]:
    """(TPR, FPR, delta) at delta = threshold_at_tpr(in_scores, tpr)."""
    s_in, s_out = _as_scores(in_scores, "in_scores"), _as_scores(out_scores, "out_scores")
    delta = threshold_at_tpr(s_in, tpr)
    return float((s_in >= delta).double().mean()), float((s_out >= delta).double().mean()), delta


def rates_at_tpr_rows(in_scores: Tensor, out_scores: Tensor, tpr: float = 0.95) -> tuple[Tensor, Tensor]:
    """(TPR, FPR) at delta* for each row of [R, n_in] / [R, n_out] score matrices, as :func:`rates_at_tpr`."""
    frac = Fraction(tpr).limit_denominator(10**6)
    k = -(-frac.numerator * in_scores.shape[1] // frac.denominator)
    delta = torch.sort(in_scores, dim=1, descending=True).values[:, k - 1:k]
    return (in_scores >= delta).double().mean(dim=1), (out_scores >= delta).double().mean(dim=1)


def fpr_at_tpr_rows(in_scores: Tensor, out_scores: Tensor, tpr: float = 0.95) -> Tensor:
    """FPR(delta*) for each row of [R, n_in] / [R, n_out] score matrices (one row per setting or resample)."""
    return rates_at_tpr_rows(in_scores, out_scores, tpr)[1]


def auroc_rows(in_scores: Tensor, out_scores: Tensor) -> Tensor:
    """AUROC for each row: P(S_in > S_out) + P(S_in = S_out) / 2 (Mann-Whitney U / (n_in n_out))."""
    sorted_out, queries = torch.sort(out_scores, dim=1).values.contiguous(), in_scores.contiguous()
    below = torch.searchsorted(sorted_out, queries, right=False).double()
    at_or_below = torch.searchsorted(sorted_out, queries, right=True).double()
    return (below + at_or_below).sum(dim=1) / (2.0 * in_scores.shape[1] * out_scores.shape[1])


def average_precision_rows(positive_scores: Tensor, negative_scores: Tensor) -> Tensor:
    """AP = sum_k (R_k - R_{k-1}) P_k over distinct thresholds (scikit-learn's definition) for each row.

    Each positive contributes the precision at the lowest threshold that still accepts it, i.e. at the end of its
    group of tied scores in descending order: AP = mean over positives of that precision.
    """
    rows, n = positive_scores.shape[0], positive_scores.shape[1] + negative_scores.shape[1]
    scores = torch.cat([positive_scores, negative_scores], dim=1)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    is_positive = (order < positive_scores.shape[1]).double()
    sorted_scores = scores.gather(1, order)
    true_positives = torch.cumsum(is_positive, dim=1)
    precision = true_positives / torch.arange(1, n + 1, dtype=torch.float64)
    group_end = torch.cat([sorted_scores[:, 1:] != sorted_scores[:, :-1],
                           torch.ones(rows, 1, dtype=torch.bool)], dim=1)
    ends = torch.where(group_end, torch.arange(n).expand(rows, n), n)
    last_of_group = torch.flip(torch.cummin(torch.flip(ends, [1]), dim=1).values, [1])
    return (is_positive * precision.gather(1, last_of_group)).sum(dim=1) / positive_scores.shape[1]


def metric_rows(in_scores: Tensor, out_scores: Tensor) -> dict[str, Tensor]:
    """Every metric of :data:`METRIC_NAMES` for each row of [R, n_in] / [R, n_out] float64 score matrices."""
    tpr, fpr = rates_at_tpr_rows(in_scores, out_scores)
    return {
        "fpr_at_95_tpr": fpr,
        "detection_error": 0.5 * (1 - tpr) + 0.5 * fpr,
        "auroc": auroc_rows(in_scores, out_scores),
        "aupr_in": average_precision_rows(in_scores, out_scores),
        "aupr_out": average_precision_rows(-out_scores, -in_scores),
        "fpr_at_95_tpr_ood_positive": fpr_at_tpr_rows(-out_scores, -in_scores),
    }


def ood_metrics(in_scores: Any, out_scores: Any) -> dict[str, float]:
    """All metrics of the paper's Table 2 for one in-distribution / OOD pair (fractions in [0, 1])."""
    s_in, s_out = _as_scores(in_scores, "in_scores"), _as_scores(out_scores, "out_scores")
    return {name: float(values[0]) for name, values in metric_rows(s_in[None], s_out[None]).items()}


class OODMetrics(Metric):
    """Stateful form of :func:`ood_metrics`: accumulates scores over batches and processes.

    ``update(scores, is_in_distribution, indexes=None)``; when sample ``indexes`` are given, a sample seen twice
    (as when a DistributedSampler pads the last batch by repeating samples) counts once.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")
        self.add_state("indexes", default=[], dist_reduce_fx="cat")

    def update(self, scores: Tensor, is_in_distribution: Tensor | bool, indexes: Tensor | None = None) -> None:
        scores = scores.detach().flatten().double()
        targets = torch.as_tensor(is_in_distribution, device=scores.device).flatten().bool()
        if targets.numel() == 1:
            targets = targets.expand(scores.numel())
        if targets.numel() != scores.numel():
            raise ValueError(f"got {scores.numel()} scores but {targets.numel()} targets")
        if indexes is None:
            indexes = torch.full_like(scores, -1, dtype=torch.long)
        elif bool((torch.as_tensor(indexes) < 0).any()):
            raise ValueError("sample indexes must be >= 0")
        self.scores.append(scores)
        self.targets.append(targets.clone())
        self.indexes.append(torch.as_tensor(indexes, device=scores.device).flatten().long())

    def compute(self) -> dict[str, float]:
        scores, targets, indexes = (torch.cat(s) if isinstance(s, list) and s else s
                                    for s in (self.scores, self.targets, self.indexes))
        if isinstance(scores, list):
            raise ValueError("OODMetrics.compute() called before any update(): no scores to evaluate")
        keep = _first_occurrence(indexes * 2 + targets.long(), indexes >= 0)
        scores, targets = scores[keep], targets[keep]
        return ood_metrics(scores[targets], scores[~targets])


def _first_occurrence(keys: Tensor, has_key: Tensor) -> Tensor:
    """Mask keeping every row without a key and the first row of each key."""
    keep = torch.ones_like(keys, dtype=torch.bool)
    order = torch.sort(torch.where(has_key, keys, -1), stable=True).indices
    sorted_keys = keys[order]
    repeated = torch.cat([torch.tensor([False], device=keys.device), sorted_keys[1:] == sorted_keys[:-1]])
    keep[order[repeated & has_key[order]]] = False
    return keep
