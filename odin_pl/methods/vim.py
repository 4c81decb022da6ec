"""vim and residual (Wang, Li, Feng, Zhang, CVPR 2022): the norm of the penultimate features outside their principal
subspace, alone (residual) or as a virtual logit matched to the energy (vim).

Fit, in float64, from the training features h_i [n, D], their logits f_i and the classifier's W [N, D], b [N]:
    u     = -pinv(W) b                         (the origin at which the logits vanish)
    X     = h - u,  Sigma = X^T X / n          (no mean subtraction); eigh(Sigma), eigenvalues ascending
    R_d   = the eigenvectors of the D - d smallest eigenvalues       (the residual space of a principal d)
    alpha = mean_i max_c f_ic / mean_i ||(h_i - u) R_d||             (vim only)
Refused: d >= D; the d-th and (d+1)-th largest eigenvalues equal within 1e-10 lambda_max (R_d not unique); a zero
mean residual; alpha <= 0 (vim).
Scores (higher = more in-distribution):
    vim      = logsumexp(f) - alpha ||(h - u) R_d||   (ranks as the paper's virtual-logit probability); any value
    residual = -||(h - u) R_d||                                                                    ; (-inf, 0]
d grid {rule, 256, 1000}: rule = 1000 if D >= 2048, 512 if D >= 768, else D // 2, written d = 0 (RULE) in a
setting; ties: the rule first, then larger d.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from odin_pl.methods.base import FitData, Method, Param, Setting
from odin_pl.methods.batch import Batch, Needs
from odin_pl.methods.features import Fit
from odin_pl.methods.registry import register_method
from odin_pl.methods.posthoc import as_rows, check_whole, drop_inapplicable
from odin_pl.errors import UserError

RULE = 0.0  # d = 0 in a setting stands for the rule (a principal subspace of dimension 0 is not a setting)
D_GRID = (RULE, 256.0, 1000.0)
EIGENVALUE_GAP = 1e-10  # relative to lambda_max: closer eigenvalues at d make R_d arbitrary
VIM_RANGE = (-math.inf, math.inf)
RESIDUAL_RANGE = (-math.inf, 0.0)


def rule_dimension(dim: int) -> int:
    """The paper's principal dimension for features of dimension D."""
    return 1000 if dim >= 2048 else 512 if dim >= 768 else dim // 2


def resolve_dimension(d: float, dim: int, method: str = "vim") -> int:
    """The principal dimension of the setting value d (RULE: the rule) for features of dimension D; a UserError
    when it is not a whole number in [1, D)."""
    return _checked(rule_dimension(dim) if d == RULE else check_whole(d, method, "the principal dimension d"), dim,
                    method)


def _checked(d: int, dim: int, method: str) -> int:
    if not 1 <= d < dim:
        raise UserError(f"{method}: the principal dimension d = {d} must lie in [1, {dim}) for features of "
                        f"dimension {dim}; give a smaller d (--params {method}.d=...)")
    return d


def tie_key(setting: Sequence[float]) -> tuple:
    """The rule first, then larger d."""
    (d,) = setting
    return d != RULE, -d


def fit_subspace(h: Tensor, weight: Tensor, bias: Tensor, dims: Sequence[int], method: str = "residual") -> dict:
    """{origin u [D], basis [D, D - min(dims)] (R of the smallest d; R_d = its first D - d columns), dims [m]}
    for the resolved principal dimensions ``dims``."""
    h = h.double()
    n, dim = h.shape
    origin = -(torch.linalg.pinv(weight.double()) @ bias.double())
    centered = h - origin
    eigenvalues, eigenvectors = torch.linalg.eigh(centered.T @ centered / n)
    lambda_max = float(eigenvalues[-1])
    for d in dims:
        _checked(d, dim, method)
        gap = float(eigenvalues[dim - d] - eigenvalues[dim - d - 1])
        if gap <= EIGENVALUE_GAP * lambda_max:
            raise UserError(f"{method}: eigenvalues {d} and {d + 1} of the training features' second moment are "
                            f"equal (gap {gap:.3g}, largest {lambda_max:.3g}), so the principal subspace of "
                            f"dimension d = {d} is not unique; choose another d (--params {method}.d=...)")
    basis = eigenvectors[:, :dim - min(dims)].contiguous()
    fit = {"origin": origin, "basis": basis, "dims": torch.tensor(list(dims), dtype=torch.float64)}
    for d in dims:
        if float(residual_norm(h, fit, d).mean()) == 0:
            raise UserError(f"{method}: the training features have no component outside their principal subspace "
                            f"of dimension d = {d} (zero mean residual); choose a smaller d")
    return fit


def fit_vim(h: Tensor, logits: Tensor, weight: Tensor, bias: Tensor, dims: Sequence[int]) -> dict:
    """fit_subspace plus alphas [m] (one per d), from the training features h and their logits."""
    fit = fit_subspace(h, weight, bias, dims, method="vim")
    max_logit = float(logits.double().amax(dim=1).mean())
    alphas = torch.tensor([max_logit / float(residual_norm(h, fit, d).mean()) for d in dims], dtype=torch.float64)
    if bool((alphas <= 0).any()):
        raise UserError(f"vim: alpha = mean max logit / mean residual = {float(alphas.min()):.3g} <= 0 on the "
                        "training features (a negative mean max logit); vim cannot be matched for this model")
    return {**fit, "alphas": alphas}


def _index(fit: dict, d: int, method: str) -> int:
    matches = (fit["dims"] == d).nonzero().flatten()
    if len(matches) == 0:
        raise UserError(f"{method}: the fit has d in {fit['dims'].long().tolist()}, not d = {d}; fit again with d "
                        "in the grid")
    return int(matches[0])


def residual_norm(h: Tensor, fit: dict, d: int) -> Tensor:
    """||(h - u) R_d|| [B] in float64."""
    _index(fit, d, "residual")
    dim = fit["basis"].shape[0]
    return ((h.double() - fit["origin"]) @ fit["basis"][:, :dim - d]).norm(dim=1)


def residual_score(h: Tensor, fit: dict, d: int) -> Tensor:
    """-||(h - u) R_d|| [B]."""
    return -residual_norm(h, fit, d)


def vim_score(logits: Tensor, h: Tensor, fit: dict, d: int) -> Tensor:
    """logsumexp(f) - alpha_d ||(h - u) R_d|| [B]."""
    alpha = fit["alphas"][_index(fit, d, "vim")]
    return torch.logsumexp(logits.double(), dim=1) - alpha * residual_norm(h, fit, d)


class _Subspace(Method):
    """What vim and residual share: the d grid, the fit's subspaces for the d that apply, the tie order."""

    params = (Param("d", "d (0: the rule)", D_GRID),)
    openood_grid = {"d": (256.0, 1000.0)}  # OpenOOD's vim (and residual) dim sweep
    needs_fit = True

    def needs(self, settings: Sequence[Setting], fit: Fit | None = None) -> Needs:
        return Needs(features=True)

    def dims(self, settings: Sequence[Setting], dim: int) -> list[int]:
        """The distinct principal dimensions of the settings that apply to features of dimension D."""
        applicable, _ = drop_inapplicable(self.name, settings, lambda s: resolve_dimension(s[0], dim, self.name))
        return sorted({resolve_dimension(d, dim, self.name) for (d,) in applicable})

    def settings_for_fit(self, settings: Sequence[Setting], fit: Fit) -> tuple[list[Setting], str | None]:
        dim = fit["basis"].shape[0]
        return drop_inapplicable(self.name, settings, lambda s: resolve_dimension(s[0], dim, self.name))

    def tie_key(self, setting: Setting) -> tuple:
        return tie_key(setting)

    def check_setting(self, setting: Sequence[float]) -> Setting:
        setting = super().check_setting(setting)
        if setting[0] != RULE:
            check_whole(setting[0], self.name, "the principal dimension d")
        return setting


@register_method
class ViM(_Subspace):
    name = "vim"

    def fit(self, data: FitData, settings: Sequence[Setting]) -> dict[str, Tensor]:
        classifier = data.classifier
        return fit_vim(data.features, data.logits, classifier.weight, classifier.bias,
                       self.dims(settings, data.features.shape[1]))

    def score(self, batch: Batch, settings: Sequence[Setting]) -> Tensor:
        fit, h = batch.fit(self.name), batch.features
        return as_rows([vim_score(batch.logits, h, fit, resolve_dimension(d, h.shape[1])) for (d,) in settings], h)

    def score_range(self, num_classes: int) -> tuple[float, float]:
        return VIM_RANGE


@register_method
class Residual(_Subspace):
    name = "residual"

    def fit(self, data: FitData, settings: Sequence[Setting]) -> dict[str, Tensor]:
        classifier = data.classifier
        return fit_subspace(data.features, classifier.weight, classifier.bias,
                            self.dims(settings, data.features.shape[1]))

    def score(self, batch: Batch, settings: Sequence[Setting]) -> Tensor:
        fit, h = batch.fit(self.name), batch.features
        return as_rows([residual_score(h, fit, resolve_dimension(d, h.shape[1], self.name)) for (d,) in settings], h)

    def score_range(self, num_classes: int) -> tuple[float, float]:
        return RESIDUAL_RANGE
