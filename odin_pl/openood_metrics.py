"""OpenOOD v1.5's metrics (``openood/evaluators/metrics.py``), OOD as the positive class, exactly as its code gets them.

``conf`` is a confidence (higher = more in-distribution); OpenOOD scores OOD-ness as ``-conf``. Per OOD test set,
on the full ID test set + that set, with scikit-learn's defaults:

* ``fpr, tpr, _ = roc_curve(ood, -conf)``; FPR@95 = ``fpr[argmax(tpr >= 0.95)]``. The ROC has one point per
  distinct score (the end of each group of tied scores) after (0, 0), and ``drop_intermediate=True`` drops every
  point whose second differences of the counts (FP and TP) are both 0 against its neighbours (a point collinear
  with them, at equal steps). With tied scores the first *kept* point with TPR >= 0.95 can lie past the first one
  that reaches it, so this FPR can exceed the exact rate at the threshold.
* AUROC = ``auc(fpr, tpr)``: trapezoids between the kept ROC points.
* AUPR-In = ``auc(recall, precision)`` of ``precision_recall_curve(1 - ood, conf)``, AUPR-Out of
  ``(ood, -conf)``: trapezoids from (recall 0, precision 1) through one point per distinct score, precision
  TP / (TP + FP), recall TP / P (not average precision).
* ACC = accuracy of the argmax of the logits on the ID test set.

Near-/far-OOD values are unweighted means over the group's sets; over seeds, mean and population std (ddof 0).
OpenOOD's tables show every value x100; these functions return fractions in [0, 1], computed in float64 with torch
only (no scikit-learn). The names are OpenOOD's columns (FPR@95, AUROC, AUPR_IN, AUPR_OUT): ``aupr_in``/``aupr_out``
are not :mod:`odin_pl.metrics`' (average precision), and ``fpr95`` can differ from its ``fpr_at_95_tpr_ood_positive``
on ties, so keep them under keys of their own (``.../openood/...``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from odin_pl.errors import UserError
from odin_pl.metrics import as_scores, take_per_row, tie_groups

OPENOOD_METRIC_NAMES = ("fpr95", "auroc", "aupr_in", "aupr_out")


def _as_rows(values: Any, name: str) -> Tensor:
    t = torch.as_tensor(values).detach().to("cpu", torch.float64)
    if t.dim() != 2 or t.shape[1] == 0:
        raise UserError(f"{name} has shape {tuple(t.shape)}: give a [rows, n] matrix of scores with n >= 1")
    if not bool(torch.isfinite(t).all()):
        raise UserError(f"{name} contains NaN or Inf; scores must be finite")
    return t


def _as_counts(values: Any, name: str, columns: int) -> Tensor:
    t = torch.as_tensor(values).detach().to("cpu", torch.float64)
    if t.dim() != 2 or t.shape[1] != columns:
        raise UserError(f"{name} has shape {tuple(t.shape)}: give [resamples, {columns}] counts, one per image")
    if not bool(((t >= 0) & (t == t.round())).all()):
        raise UserError(f"{name} must be non-negative integers (how often each image is drawn)")
    if not bool((t.sum(dim=1) > 0).all()):
        raise UserError(f"{name} has a row that draws no image: every resample needs ID and OOD images")
    return t


def _neighbour(mask: Tensor, before: bool) -> Tensor:
    """For each position: the index of the nearest position with ``mask`` strictly before it (-1 where none), or
    strictly after it (n where none)."""
    rows, n = mask.shape
    index = torch.arange(n).expand(rows, n)
    if before:
        marked = torch.where(mask, index, -1)
        shifted = torch.cat([torch.full((rows, 1), -1), marked[:, :-1]], dim=1)
        return torch.cummax(shifted, dim=1).values
    marked = torch.where(mask, index, n)
    shifted = torch.cat([marked[:, 1:], torch.full((rows, 1), n)], dim=1)
    return torch.flip(torch.cummin(torch.flip(shifted, [1]), dim=1).values, [1])


def _at(values: Tensor, index: Tensor, fill: float) -> Tensor:
    """values[r, index[r, j]], ``fill`` where the index is out of range (-1 or n)."""
    inside = (index >= 0) & (index < values.shape[1])
    return torch.where(inside, values.gather(1, index.clamp(0, values.shape[1] - 1)), fill)


def _precision(tp: Tensor, fp: Tensor) -> Tensor:
    """TP / (TP + FP); 1 where nothing is accepted yet (the curve's start point, so an empty group adds no area)."""
    accepted = tp + fp
    return torch.where(accepted > 0, tp / accepted, 1.0)


def openood_metric_rows(id_conf: Any, ood_conf: Any, id_weights: Any = None, ood_weights: Any = None,
                        tpr: float = 0.95) -> dict[str, Tensor]:
    """Every metric of :data:`OPENOOD_METRIC_NAMES` for each row of [R, n_id] / [R, n_ood] confidences (one row per
    setting); or, for one row of confidences and [B, n_id] / [B, n_ood] integer weights (how often each image is
    drawn, as a bootstrap resample's counts), for each weight row, equal to the metric of the resample's images.

    One stable sort of each row by ascending confidence (descending OOD score); TP (OOD) and FP (ID) are cumulative
    weights read at the ends of the groups of tied scores; a group of zero weight is no point (scikit-learn drops
    zero-weight samples). Each point's neighbours among the points give roc_curve's drop_intermediate rule.
    """
    if not 0 < tpr <= 1:
        raise UserError(f"tpr must lie in (0, 1], got {tpr}")
    id_conf, ood_conf = _as_rows(id_conf, "id_conf"), _as_rows(ood_conf, "ood_conf")
    if id_conf.shape[0] != ood_conf.shape[0]:
        raise UserError(f"id_conf has {id_conf.shape[0]} rows but ood_conf {ood_conf.shape[0]}: one row per setting")
    n_id_columns = id_conf.shape[1]
    pooled = torch.cat([id_conf, ood_conf], dim=1)
    order = torch.sort(pooled, dim=1, stable=True).indices
    conf, is_ood = pooled.gather(1, order), order >= n_id_columns
    if id_weights is None and ood_weights is None:
        weights = torch.ones_like(pooled)
    else:
        if id_weights is None or ood_weights is None or len(pooled) != 1:
            raise UserError("weights need one row of confidences and both id_weights and ood_weights")
        id_weights = _as_counts(id_weights, "id_weights", n_id_columns)
        ood_weights = _as_counts(ood_weights, "ood_weights", ood_conf.shape[1])
        if len(id_weights) != len(ood_weights):
            raise UserError(f"id_weights has {len(id_weights)} rows but ood_weights {len(ood_weights)}")
        weights = torch.cat([id_weights, ood_weights], dim=1)[:, order[0]]
    w_ood, w_id = weights * is_ood, weights * ~is_ood
    n_ood, n_id = w_ood.sum(dim=1, keepdim=True), w_id.sum(dim=1, keepdim=True)
    tp, fp = torch.cumsum(w_ood, dim=1), torch.cumsum(w_id, dim=1)
    end, start = tie_groups(conf)
    n = pooled.shape[1]
    last = end == torch.arange(n)
    has_before, before = start > 0, (start - 1).clamp(min=0)
    tp_before, fp_before = take_per_row(tp, before) * has_before, take_per_row(fp, before) * has_before
    point = last & (tp + fp > tp_before + fp_before)  # roc_curve's points (before drop_intermediate)

    previous, following = _neighbour(point, before=True), _neighbour(point, before=False)
    inner = (previous >= 0) & (following < n)
    second_tp = _at(tp, following, 0.0) - 2 * tp + _at(tp, previous, 0.0)
    second_fp = _at(fp, following, 0.0) - 2 * fp + _at(fp, previous, 0.0)
    kept = point & (~inner | (second_tp != 0) | (second_fp != 0))
    tpr_curve, fpr_curve = tp / n_ood, fp / n_id
    at = (kept & (tpr_curve >= tpr)).int().argmax(dim=1, keepdim=True)  # the last point has TPR 1: always found
    kept_before = _neighbour(kept, before=True)
    roc_area = (fpr_curve - _at(fpr_curve, kept_before, 0.0)) * (tpr_curve + _at(tpr_curve, kept_before, 0.0)) / 2

    out_area = (tp / n_ood - tp_before / n_ood) * (_precision(tp, fp) + _precision(tp_before, fp_before)) / 2
    in_incl, out_incl = n_id - fp_before, n_ood - tp_before  # ID-positive counts at confidence >= the group's
    in_excl, out_excl = n_id - fp, n_ood - tp  # ... at confidence above the group's
    in_area = ((in_incl / n_id - in_excl / n_id)
               * (_precision(in_incl, out_incl) + _precision(in_excl, out_excl)) / 2)
    zero = torch.zeros((), dtype=torch.float64)
    return {
        "fpr95": fpr_curve.gather(1, at)[:, 0],
        "auroc": torch.where(kept, roc_area, zero).sum(dim=1),
        "aupr_in": torch.where(last, in_area, zero).sum(dim=1),
        "aupr_out": torch.where(last, out_area, zero).sum(dim=1),
    }


def openood_metrics(id_conf: Any, ood_conf: Any) -> dict[str, float]:
    """The metrics of :data:`OPENOOD_METRIC_NAMES` for one ID test set and one OOD set (fractions in [0, 1])."""
    s_id, s_ood = as_scores(id_conf, "id_conf"), as_scores(ood_conf, "ood_conf")
    return {name: float(values[0]) for name, values in openood_metric_rows(s_id[None], s_ood[None]).items()}


def id_accuracy(logits: Any, labels: Any, weights: Any = None) -> Tensor:
    """Accuracy of ``argmax(logits)`` (first maximum) against ``labels`` on the ID test set: a 0-dim tensor, or
    one value per row of [B, n] integer ``weights`` (bootstrap counts)."""
    logits, labels = torch.as_tensor(logits).detach().cpu(), torch.as_tensor(labels).detach().cpu()
    if logits.dim() != 2 or labels.shape != (logits.shape[0],) or logits.shape[0] == 0:
        raise UserError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)}: give [n, classes] logits "
                        "and n labels, n >= 1")
    correct = (logits.argmax(dim=1) == labels).double()
    if weights is None:
        return correct.mean()
    counts = _as_counts(weights, "weights", len(correct))
    return (counts * correct).sum(dim=1) / counts.sum(dim=1)


def group_mean(per_set: Mapping[str, Any], members: Sequence[str]) -> Any:
    """The unweighted mean of a metric over a group's sets (near-OOD or far-OOD), each set counted once whatever
    its size; every member must be in ``per_set`` (a mean over fewer sets is not OpenOOD's: pass the members that
    were evaluated, and say so)."""
    if not members:
        raise UserError("a near/far mean needs at least one set")
    missing = [name for name in members if name not in per_set]
    if missing:
        raise UserError(f"no value for {missing} (have {sorted(per_set)}): the group mean needs every member")
    total = per_set[members[0]]
    for name in members[1:]:
        total = total + per_set[name]
    return total / len(members)


def seed_mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation (ddof 0, as OpenOOD's ``np.std``) of one value per seed."""
    values = [float(v) for v in values]
    if not values or not all(math.isfinite(v) for v in values):
        raise UserError(f"mean and std over seeds need at least one finite value, got {values}")
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std(correction=0))
