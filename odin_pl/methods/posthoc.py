"""Maths shared by the post-hoc detectors (DESIGN "More detectors"), pure functions on float64 tensors.

- class_means: mu_c = mean of h_i over the images with class c (true labels or predictions), every class present.
- tied_precision: pinv of a scatter matrix that must have full rank (refused otherwise).
- top_k_mask: the k largest entries of each row by a stable descending sort (lower index first on ties).
- kept_count: k = D - round(D p / 100) (numpy's round half to even), the entries ASH and SCALE keep.
- directions: h / ||h|| row by row (a zero norm refused).
- energy: logsumexp of the classifier g(h) = h W^T + b.
- check_whole, check_positive: one-line refusals of a bad parameter value.
- drop_inapplicable: the settings a fit can score and a note on the others (the wrappers' settings_for_fit).
- as_rows: score rows stacked into [n_settings, B] in the batch's dtype.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from odin_pl.errors import UserError


def class_means(h: Tensor, classes: Tensor, num_classes: int, method: str, what: str = "training images") -> Tensor:
    """mu [num_classes, D] in float64: the mean of the rows of h [n, D] per class; a UserError naming the classes
    without a row (``what`` says which images were grouped)."""
    counts = torch.bincount(classes, minlength=num_classes)
    if len(counts) > num_classes:
        raise UserError(f"{method}: class index {int(classes.max())} is out of range for {num_classes} classes")
    if bool((counts == 0).any()):
        missing = (counts == 0).nonzero().flatten().tolist()
        raise UserError(f"{method}: class(es) {missing[:10]} have none of the {len(h)} {what}; fit on more images "
                        "(--fit_images) so that every class has its mean")
    grouped = h.double()[torch.sort(classes, stable=True).indices].split(counts.tolist())
    return torch.stack([rows.mean(dim=0) for rows in grouped])


def tied_precision(centered: Tensor, method: str, what: str) -> Tensor:
    """pinv(S) with S = centered^T centered / n (float64); a UserError when S has not full rank (``what`` names
    the scatter)."""
    n, dim = centered.shape
    scatter = centered.T @ centered / n
    rank = int(torch.linalg.matrix_rank(scatter, hermitian=True))
    if rank < dim:
        raise UserError(f"{method}: the {what} of the training features has rank {rank}, below the feature "
                        f"dimension {dim} (from {n} training images); it needs full rank: more training images "
                        "than features (--fit_images), and no feature constant over the training images")
    return torch.linalg.pinv(scatter, hermitian=True)


def top_k_mask(h: Tensor, k: int) -> Tensor:
    """A boolean mask [B, D] of the k largest entries of each row of h (stable descending sort: on ties the lower
    index is kept)."""
    order = torch.sort(h, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.zeros_like(h, dtype=torch.bool).scatter_(1, order, True)


def kept_count(dim: int, percentile: float, method: str) -> int:
    """k = D - round(D p / 100) (numpy's round half to even): the entries of h kept at percentile p (a percent);
    a UserError when p is outside [0, 100) or keeps nothing."""
    if not 0 <= percentile < 100:
        raise UserError(f"{method}: the percentile p must lie in [0, 100) (a percent, e.g. 90), got {percentile!r}")
    k = dim - int(np.round(dim * percentile / 100))
    if k < 1:
        raise UserError(f"{method}: p = {percentile:g} keeps no entry of the {dim} features; give a smaller p")
    return k


def directions(h: Tensor, method: str, what: str) -> Tensor:
    """h / ||h|| row by row in float64; a UserError naming the rows of zero norm (``what``: whose features)."""
    h = h.double()
    norms = h.norm(dim=1, keepdim=True)
    if bool((norms == 0).any()):
        rows = (norms.flatten() == 0).nonzero().flatten().tolist()
        raise UserError(f"{method}: {what} {rows[:10]} have all-zero penultimate features, whose direction "
                        f"(h / ||h||) is undefined; drop {method} from --methods for this model")
    return h / norms


def energy(h: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """logsumexp(h W^T + b) [B] in float64."""
    return torch.logsumexp(torch.nn.functional.linear(h.double(), weight.double(), bias.double()), dim=1)


def check_whole(value: float, method: str, name: str, low: int = 1) -> int:
    """``value`` as an int, or a UserError when it is not a whole number >= ``low``."""
    if not (float(value).is_integer() and value >= low):
        raise UserError(f"{method}: {name} must be a whole number >= {low}, got {value!r}")
    return int(value)


def check_positive(value: float, method: str, name: str) -> float:
    """``value`` as a float, or a UserError when it is not a finite number > 0."""
    if not (np.isfinite(value) and value > 0):
        raise UserError(f"{method}: {name} must be a finite number > 0, got {value!r}")
    return float(value)


def drop_inapplicable(method: str, settings: Sequence[tuple[float, ...]], check: Callable[[tuple[float, ...]], object]
                      ) -> tuple[list[tuple[float, ...]], str | None]:
    """The settings for which ``check`` raises no UserError and a note naming why the others were dropped; a
    UserError when the one setting asked for (an explicit choice), or every setting of the grid, cannot apply."""
    reasons: dict[tuple[float, ...], str] = {}
    for setting in settings:
        try:
            check(setting)
        except UserError as err:
            reasons[setting] = str(err).removeprefix(f"{method}: ")
    kept = [s for s in settings if s not in reasons]
    if reasons and len(settings) == 1:
        raise UserError(f"{method}: {reasons[settings[0]]}")
    why = "; ".join(dict.fromkeys(reason.split("; ")[0] for reason in reasons.values()))  # without the hints
    if not kept:
        raise UserError(f"{method}: no setting of the grid applies: {why}")
    if not reasons:
        return kept, None
    dropped = ", ".join("(" + ", ".join(f"{v:g}" for v in s) + ")" for s in reasons)
    return kept, f"{method}: setting(s) {dropped} dropped from the grid: {why}"


def as_rows(rows: Sequence[Tensor], like: Tensor) -> Tensor:
    """The score rows [B] stacked into [len(rows), B] in ``like``'s dtype (the batch's)."""
    return torch.stack(list(rows)).to(like.dtype)
