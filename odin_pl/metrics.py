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
from odin_pl.errors import UserError

METRIC_NAMES = ("fpr_at_95_tpr", "detection_error", "auroc", "aupr_in", "aupr_out", "fpr_at_95_tpr_ood_positive")


def as_scores(scores: Any, name: str) -> Tensor:
    """``scores`` (a tensor, array or sequence of one score per image: [n], [n, 1] or [1, n]) as a float64 vector
    [n] on the CPU, for the metrics and thresholds; ``name`` names the argument in the UserError that refuses any
    other shape (flattening a [2, n] array would pool two settings' scores into one wrong metric), an empty set of
    scores, and NaN or Inf."""
    t = torch.as_tensor(scores).detach().to("cpu", torch.float64)
    if t.dim() > 2 or (t.dim() == 2 and 1 not in t.shape):
        raise UserError(f"{name} has shape {tuple(t.shape)}: give one score per image, shape [n] (or [n, 1] / "
                        "[1, n]); for several settings, compute the metrics of each row separately")
    t = t.flatten()
    if t.numel() == 0:
        raise UserError(f"{name} is empty: an OOD metric needs at least one in-distribution and one OOD score "
                        "(check that the data set is not empty)")
    if not bool(torch.isfinite(t).all()):
        raise UserError(f"{name} contains NaN or Inf; scores must be finite")
    return t


def threshold_at_tpr(in_scores: Tensor, tpr: float = 0.95) -> float:
    """The largest delta with mean(in_scores >= delta) >= tpr: the ceil(tpr * n)-th largest score."""
    frac = Fraction(tpr).limit_denominator(10**6)
    if not 0 < frac <= 1:
        raise UserError(f"tpr must lie in (0, 1], got {tpr}")
    n = in_scores.numel()
    k = -(-frac.numerator * n // frac.denominator)  # exact ceil(tpr * n), no float rounding
    return float(torch.sort(in_scores, descending=True).values[k - 1])


def rates_at_tpr(in_scores: Any, out_scores: Any, tpr: float = 0.95) -> tuple[float, float, float]:
    """(TPR, FPR, delta) at delta = threshold_at_tpr(in_scores, tpr)."""
    s_in, s_out = as_scores(in_scores, "in_scores"), as_scores(out_scores, "out_scores")
    delta = threshold_at_tpr(s_in, tpr)
    return float((s_in >= delta).double().mean()), float((s_out >= delta).double().mean()), delta


def metric_rows(in_scores: Tensor, out_scores: Tensor, in_weights: Tensor | None = None,
                out_weights: Tensor | None = None, tpr: float = 0.95) -> dict[str, Tensor]:
    """Every metric of :data:`METRIC_NAMES` for each row of [R, n_in] / [R, n_out] float64 score matrices (one row
    per setting); or, for one row of scores and [B, n_in] / [B, n_out] integer weights (how often each image counts,
    as a bootstrap resample's counts), for each weight row.

    One stable sort of the pooled scores per score row, descending; every metric is then a cumulative sum of the
    in-distribution (TP) and OOD (FP) weights read at the ends of the groups of tied scores (ties are accepted
    together, as a threshold accepts them):

    * delta* = the first position where TP >= ceil(tpr n_in); TPR, FPR = TP, FP at the end of its group;
    * AUROC = sum_in w (n_out - (FP at the group's end + FP before the group) / 2) / (n_in n_out);
    * AUPR-In = sum_in w TP / (TP + FP) at the group's end / n_in (each positive weighs the precision of the lowest
      threshold that accepts it: scikit-learn's average precision); AUPR-Out the same from the bottom, OOD positive;
    * FPR at 95% TPR with OOD positive: the same threshold rule from the bottom.
    """
    n_in_columns = in_scores.shape[1]
    pooled = torch.cat([in_scores, out_scores], dim=1)
    order = torch.sort(pooled, dim=1, descending=True, stable=True).indices
    scores, is_in = pooled.gather(1, order), order < n_in_columns
    if in_weights is None and out_weights is None:
        weights = torch.ones_like(pooled)
    else:  # one row of scores, a row of weights per resample: reorder the columns once
        weights = torch.cat([in_weights, out_weights], dim=1).double()[:, order[0]]
    rows, n = weights.shape
    w_in, w_out = weights * is_in, weights * ~is_in
    n_in, n_out = w_in.sum(dim=1, keepdim=True), w_out.sum(dim=1, keepdim=True)
    tp, fp = torch.cumsum(w_in, dim=1), torch.cumsum(w_out, dim=1)
    end, start = tie_groups(scores)
    tp_end, fp_end = take_per_row(tp, end), take_per_row(fp, end)
    has_before, before = start > 0, (start - 1).clamp(min=0)
    tp_before, fp_before = take_per_row(tp, before) * has_before, take_per_row(fp, before) * has_before
    rest_in, rest_out = n_in - tp_before, n_out - fp_before  # weights at or below each group
    fraction = Fraction(tpr).limit_denominator(10**6)
    k_in = -(-fraction.numerator * n_in.long() // fraction.denominator)
    at = (tp >= k_in).int().argmax(dim=1, keepdim=True)  # delta*: the first position reaching k_in
    tpr_at, fpr_at = tp_end.gather(1, at) / n_in, fp_end.gather(1, at) / n_out
    k_out = -(-fraction.numerator * n_out.long() // fraction.denominator)
    from_bottom = n_out - fp + w_out  # OOD weight at or below each position
    at_out = n - 1 - torch.flip(from_bottom >= k_out, [1]).int().argmax(dim=1, keepdim=True)
    return {
        "fpr_at_95_tpr": fpr_at[:, 0],
        "detection_error": (0.5 * (1 - tpr_at) + 0.5 * fpr_at)[:, 0],
        "auroc": (w_in * (n_out - (fp_end + fp_before) / 2)).sum(dim=1) / (n_in * n_out)[:, 0],
        "aupr_in": torch.where(w_in > 0, w_in * tp_end / (tp_end + fp_end), 0.0).sum(dim=1) / n_in[:, 0],
        "aupr_out": torch.where(w_out > 0, w_out * rest_out / (rest_out + rest_in), 0.0).sum(dim=1) / n_out[:, 0],
        "fpr_at_95_tpr_ood_positive": rest_in.gather(1, at_out)[:, 0] / n_in[:, 0],
    }


def take_per_row(values: Tensor, index: Tensor) -> Tensor:
    """values[r, index[r, j]]; one index row serves every row of values (columns taken once)."""
    return values[:, index[0]] if len(index) == 1 else values.gather(1, index)


def tie_groups(scores: Tensor) -> tuple[Tensor, Tensor]:
    """For rows sorted in descending order: the index of the last and of the first element of each element's
    group of equal scores."""
    n = scores.shape[1]
    index = torch.arange(n).expand_as(scores)
    differs = scores[:, 1:] != scores[:, :-1]
    last = torch.cat([differs, torch.ones_like(differs[:, :1])], dim=1)
    first = torch.cat([torch.ones_like(differs[:, :1]), differs], dim=1)
    end = torch.flip(torch.cummin(torch.flip(torch.where(last, index, n), [1]), dim=1).values, [1])
    start = torch.cummax(torch.where(first, index, 0), dim=1).values
    return end, start


def ood_metrics(in_scores: Any, out_scores: Any) -> dict[str, float]:
    """All metrics of the paper's Table 2 for one in-distribution / OOD pair (fractions in [0, 1])."""
    s_in, s_out = as_scores(in_scores, "in_scores"), as_scores(out_scores, "out_scores")
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
            raise UserError(f"got {scores.numel()} scores but {targets.numel()} targets")
        if indexes is None:
            indexes = torch.full_like(scores, -1, dtype=torch.long)
        elif bool((torch.as_tensor(indexes) < 0).any()):
            raise UserError("sample indexes must be >= 0")
        self.scores.append(scores)
        self.targets.append(targets.clone())
        self.indexes.append(torch.as_tensor(indexes, device=scores.device).flatten().long())

    def compute(self) -> dict[str, float]:
        scores, targets, indexes = (torch.cat(s) if isinstance(s, list) and s else s
                                    for s in (self.scores, self.targets, self.indexes))
        if isinstance(scores, list):
            raise UserError("OODMetrics.compute() called before any update(): no scores to evaluate")
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
