"""The maths of the post-hoc detectors on features and logits (vim, residual, rmds, gen, ash_p/b/s, scale, she, klm,
dice, gradnorm, fdbd, nnguide): each fit and score against an independent float64 reference written from its paper's
definition in numpy (DESIGN "More detectors"), against pytorch-ood 0.4.0 with DESIGN's relation, and every refusal.

Inputs: random float64 features and classifiers (seeded), continuous, so that no top-k, argmax or percentile has a
tie; post-ReLU features (>= 0) where ASH and SCALE need them; logits of moderate size, so that no softmax entry leaves
[1e-7, 1 - 1e-7] (pytorch-ood's GEN clamp) and no typical softmax of KLM is 0. Tolerances are stated per test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_ood.detector import ASH, DICE, GEN, RMD, SCALE, SHE, ViM, GradNorm, KLMatching, NNGuide, fDBD
from torch import nn

from odin_pl.errors import UserError
from odin_pl.methods import ash, dice, fdbd, gen, gradnorm, klm, nnguide, posthoc, rmds, scale, she, vim

N, D, N_TRAIN, B = 5, 12, 200, 9
SUBSPACE = 6  # vim's d in the tests: the spectrum below has a clear gap there


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=1, keepdims=True)
    return top[:, 0] + np.log(np.exp(x - top).sum(axis=1))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data() -> dict:
    """A classifier W [N, D], b [N]; 200 positive training features whose second moment about u = -pinv(W) b has
    6 large eigenvalues (5 spread directions and the mean) well above the other 6; 9 test features; their logits
    and labels (every class predicted correctly at least once)."""
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(N, D)) * 0.3
    basis = np.linalg.qr(rng.normal(size=(D, D)))[0]
    spread = np.r_[np.linspace(3.0, 4.0, SUBSPACE - 1), np.linspace(0.2, 0.5, D - SUBSPACE + 1)]  # + the mean
    h_train = 15.0 + rng.normal(size=(N_TRAIN, D)) * spread @ basis.T
    bias = -(weight @ h_train.mean(axis=0)) + rng.normal(size=N) * 0.5
    h = 15.0 + rng.normal(size=(B, D)) * 3.0
    assert min(h_train.min(), h.min()) > 0
    logits_train, logits = h_train @ weight.T + bias, h @ weight.T + bias
    labels = logits_train.argmax(axis=1)
    labels[::7] = (labels[::7] + 1) % N  # some training images misclassified
    assert set(labels[logits_train.argmax(axis=1) == labels]) == set(range(N))
    return {"W": weight, "b": bias, "h_train": h_train, "h": h, "f_train": logits_train, "f": logits, "y": labels}


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a))


def _linear(weight: np.ndarray, bias: np.ndarray, dtype: torch.dtype) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0]).to(dtype)
    with torch.no_grad():
        layer.weight.copy_(_t(weight))
        layer.bias.copy_(_t(bias))
    return layer


# --- vim and residual ---------------------------------------------------------------------------------------------

def _reference_vim(s: dict, d: int) -> tuple[np.ndarray, np.ndarray]:
    """(vim, residual) scores from Wang et al.'s definition: origin -pinv(W) b, residual space of the D - d
    smallest eigenvalues of X^T X / n, alpha = mean max logit / mean residual norm."""
    u = -np.linalg.pinv(s["W"]) @ s["b"]
    x = s["h_train"] - u
    values, vectors = np.linalg.eigh(x.T @ x / len(x))
    r = vectors[:, np.argsort(values)[: D - d]]
    alpha = s["f_train"].max(axis=1).mean() / np.linalg.norm(x @ r, axis=1).mean()
    residual = np.array([np.linalg.norm((h_i - u) @ r) for h_i in s["h"]])
    return _logsumexp(s["f"]) - alpha * residual, -residual


def test_vim_and_residual_match_the_reference(data: dict) -> None:
    """Float64 against numpy's eigh: 1e-9 relative."""
    fit = vim.fit_vim(_t(data["h_train"]), _t(data["f_train"]), _t(data["W"]), _t(data["b"]), [SUBSPACE, 3])
    for d in (SUBSPACE, 3):
        expected_vim, expected_residual = _reference_vim(data, d)
        np.testing.assert_allclose(vim.vim_score(_t(data["f"]), _t(data["h"]), fit, d).numpy(), expected_vim,
                                   rtol=1e-9)
        np.testing.assert_allclose(vim.residual_score(_t(data["h"]), fit, d).numpy(), expected_residual, rtol=1e-9)
    assert fit["basis"].shape == (D, D - 3)


def test_vim_and_residual_match_pytorch_ood(data: dict) -> None:
    """pytorch-ood's ViM computes in float32 whatever the inputs: ours = -theirs to 1e-4 (1 + |s|) (vim) and
    residual = -||(h - vim.u) @ vim.principal_subspace|| likewise, on a spectrum with a clear gap at d = 6."""
    theirs = ViM(None, d=SUBSPACE, w=_t(data["W"]), b=_t(data["b"]))
    theirs.fit_features(_t(data["h_train"]), _t(data["y"]))
    fit = vim.fit_vim(_t(data["h_train"]), _t(data["f_train"]), _t(data["W"]), _t(data["b"]), [SUBSPACE])
    ours = vim.vim_score(_t(data["f"]), _t(data["h"]), fit, SUBSPACE).numpy()
    expected = -theirs.predict_features(_t(data["h"])).double().numpy()
    assert np.all(np.abs(ours - expected) <= 1e-4 * (1 + np.abs(expected)))
    h = _t(data["h"]).float()
    their_residual = -((h - theirs.u) @ theirs.principal_subspace).norm(dim=1).double().numpy()
    ours = vim.residual_score(_t(data["h"]), fit, SUBSPACE).numpy()
    assert np.all(np.abs(ours - their_residual) <= 1e-4 * (1 + np.abs(their_residual)))


def test_vim_dimension_rule_grid_and_ties() -> None:
    assert [vim.rule_dimension(dim) for dim in (512, 768, 2047, 2048)] == [256, 512, 512, 1000]
    assert vim.resolve_dimension(vim.RULE, 2048) == 1000 and vim.resolve_dimension(256.0, 2048) == 256
    assert sorted([(1000.0,), (256.0,), (vim.RULE,)], key=vim.tie_key) == [(vim.RULE,), (1000.0,), (256.0,)]
    with pytest.raises(UserError, match="must lie in"):
        vim.resolve_dimension(1000.0, 512)
    with pytest.raises(UserError, match="whole number"):
        vim.resolve_dimension(2.5, 512)


def test_vim_refusals(data: dict) -> None:
    h, f, w, b = _t(data["h_train"]), _t(data["f_train"]), _t(data["W"]), _t(data["b"])
    with pytest.raises(UserError, match=r"d = 12 must lie in \[1, 12\)"):
        vim.fit_vim(h, f, w, b, [D])
    flat = torch.cat([torch.ones(N_TRAIN, 4), torch.zeros(N_TRAIN, D - 4)], dim=1)  # second moment of rank 1
    with pytest.raises(UserError, match="eigenvalues 2 and 3 .* equal"):
        vim.fit_subspace(flat, w, torch.zeros(N), [2])
    plane = torch.cat([torch.randn(N_TRAIN, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)),
                       torch.zeros(N_TRAIN, D - 3, dtype=torch.float64)], dim=1)  # rank 3, u = 0
    with pytest.raises(UserError, match="zero mean residual"):
        vim.fit_subspace(plane, w, torch.zeros(N, dtype=torch.float64), [3])
    with pytest.raises(UserError, match="alpha .* <= 0"):
        vim.fit_vim(h, -f.abs(), w, b, [SUBSPACE])
    fit = vim.fit_vim(h, f, w, b, [SUBSPACE])
    with pytest.raises(UserError, match="not d = 3"):
        vim.vim_score(f, h, fit, 3)


# --- rmds ---------------------------------------------------------------------------------------------------------

def _reference_rmds(s: dict) -> tuple[np.ndarray, np.ndarray]:
    """(scores, d_0 of the test features) from Ren et al.'s definition, numpy loops."""
    h, y = s["h_train"], s["y"]
    means = np.stack([h[y == c].mean(axis=0) for c in range(N)])
    sigma = sum(np.outer(h_i - means[y_i], h_i - means[y_i]) for h_i, y_i in zip(h, y)) / len(h)
    mu0 = h.mean(axis=0)
    sigma0 = sum(np.outer(h_i - mu0, h_i - mu0) for h_i in h) / len(h)
    p, p0 = np.linalg.pinv(sigma), np.linalg.pinv(sigma0)
    d0 = np.array([(x - mu0) @ p0 @ (x - mu0) for x in s["h"]])
    scores = np.array([-min((x - means[c]) @ p @ (x - means[c]) - d0[i] for c in range(N))
                       for i, x in enumerate(s["h"])])
    return scores, d0


def test_rmds_matches_the_reference(data: dict) -> None:
    """Float64: 1e-9 relative to the size of d_0 (the score is a difference of two distances)."""
    fit = rmds.fit_rmds(_t(data["h_train"]), _t(data["y"]), N)
    expected, d0 = _reference_rmds(data)
    np.testing.assert_allclose(rmds.rmds_score(_t(data["h"]), fit).numpy(), expected, rtol=0, atol=1e-9 * d0.max())


def test_rmds_matches_pytorch_ood(data: dict, float64_default) -> None:
    """pytorch-ood's RMD uses the unnormalized scatters S (+1e-6 I): ours = -n theirs up to that ridge, to
    1e-5 / lambda_min(S) relative to n d_0 (float64 default dtype)."""
    theirs = RMD(None).fit_features(_t(data["h_train"]), _t(data["y"]))
    fit = rmds.fit_rmds(_t(data["h_train"]), _t(data["y"]), N)
    _, d0 = _reference_rmds(data)
    x = data["h_train"] - data["h_train"].mean(axis=0)
    tolerance = 1e-5 / np.linalg.eigvalsh(x.T @ x).min()
    expected = -N_TRAIN * theirs.predict_features(_t(data["h"])).numpy()
    np.testing.assert_allclose(rmds.rmds_score(_t(data["h"]), fit).numpy(), expected, rtol=0,
                               atol=tolerance * d0.max())


def test_rmds_refuses_rank_deficiency_and_missing_classes(data: dict) -> None:
    h = _t(data["h_train"]).clone()
    h[:, 3] = 1.0  # a constant feature: the class scatter loses rank
    with pytest.raises(UserError, match="rank 11, below the feature dimension 12"):
        rmds.fit_rmds(h, _t(data["y"]), N)
    with pytest.raises(UserError, match=r"class\(es\) \[5\] have none"):
        rmds.fit_rmds(_t(data["h_train"]), _t(data["y"]), N + 1)
    with pytest.raises(UserError, match="class index 4 is out of range for 4 classes"):
        rmds.fit_rmds(_t(data["h_train"]), _t(data["y"]), N - 1)


# --- gen ----------------------------------------------------------------------------------------------------------

def _reference_gen(logits: np.ndarray, gamma: float, m: int) -> np.ndarray:
    out = []
    for p in _softmax(logits):
        top = np.sort(p)[::-1][: min(m, len(p))]
        out.append(-sum(q**gamma * (1 - q) ** gamma for q in top))
    return np.array(out)


@pytest.mark.parametrize("gamma, m", [(0.1, 3), (2.0, 100), (0.01, 1)])
def test_gen_matches_the_reference_and_pytorch_ood(data: dict, gamma: float, m: int) -> None:
    """Reference: 1e-12 relative. pytorch-ood's GEN (every p here in [1e-7, 1 - 1e-7], so its clamp is inactive;
    it averages): ours = -M' theirs to 1e-12 relative."""
    ours = gen.gen_score(_t(data["f"]), gamma, m).numpy()
    np.testing.assert_allclose(ours, _reference_gen(data["f"], gamma, m), rtol=1e-12)
    p = _softmax(data["f"])
    assert p.min() > 1e-7 and p.max() < 1 - 1e-7
    m_eff = min(m, N)
    np.testing.assert_allclose(ours, -m_eff * GEN.score(_t(data["f"]), gamma=gamma, M=m_eff).numpy(), rtol=1e-12)
    low, high = gen.score_range(N, gamma, m)
    assert np.all((ours >= low) & (ours <= high))


def test_gen_grid_ties_and_refusals() -> None:
    settings = [(g, m) for g in gen.GAMMA_GRID for m in gen.M_GRID]
    assert min(settings, key=gen.tie_key) == (0.1, 100.0)
    assert sorted([(0.5, 10.0), (0.1, 50.0), (0.01, 100.0)], key=gen.tie_key) == [(0.1, 50.0), (0.01, 100.0),
                                                                                  (0.5, 10.0)]
    kept = gen.distinct_settings(settings, 60)  # M = 100 .. 1000 all give M' = 60: only M = 100 stays
    assert {m for _, m in kept} == {10.0, 50.0, 100.0} and len(kept) == 3 * len(gen.GAMMA_GRID)
    with pytest.raises(UserError, match="gamma must be a finite number > 0"):
        gen.gen_score(torch.zeros(2, 3), 0.0, 10)
    with pytest.raises(UserError, match="M must be a whole number"):
        gen.gen_score(torch.zeros(2, 3), 0.1, 2.5)


# --- ash and scale ------------------------------------------------------------------------------------------------

def _reference_shaped(h: np.ndarray, variant: str, p: float) -> np.ndarray:
    """Djurisic et al.'s shaping, one row at a time (stable descending order)."""
    k = len(h) - int(np.round(len(h) * p / 100))
    keep = np.argsort(-h, kind="stable")[:k]
    out = np.zeros_like(h)
    if variant == "ash_p":
        out[keep] = h[keep]
    elif variant == "ash_b":
        out[keep] = h.sum() / k
    else:
        out[keep] = h[keep] * np.exp(h.sum() / h[keep].sum())
    return out


@pytest.mark.parametrize("variant", ash.VARIANTS)
@pytest.mark.parametrize("p", [65.0, 90.0])
def test_ash_matches_the_reference_and_pytorch_ood(data: dict, variant: str, p: float) -> None:
    """Reference: 1e-12 relative. pytorch-ood's ASH on h[:, :, None, None] with head = g o flatten (D p / 100 is not
    a half here, no ties): ours = -theirs exactly in float64."""
    h, w, b = _t(data["h"]), _t(data["W"]), _t(data["b"])
    ours = ash.ash_score(h, w, b, variant, p)
    shaped = np.stack([_reference_shaped(row, variant, p) for row in data["h"]])
    np.testing.assert_allclose(ours.numpy(), _logsumexp(shaped @ data["W"].T + data["b"]), rtol=1e-12)
    theirs = ASH(backbone=None, head=lambda x: F.linear(x.flatten(1), w, b), variant=variant.replace("_", "-"),
                 percentile=p / 100)
    assert torch.equal(ours, -theirs.predict_feature_maps(h[:, :, None, None]))


@pytest.mark.parametrize("p", [65.0, 85.0, 95.0])
def test_scale_matches_the_reference_and_pytorch_ood(data: dict, p: float) -> None:
    """Reference logsumexp(g(r h)): 1e-12 relative. pytorch-ood's SCALE on h[:, :, None, None]: ours = -theirs to
    1e-12 relative (ours from the logits: r (f - b) + b)."""
    h, w, b = _t(data["h"]), _t(data["W"]), _t(data["b"])
    ours = scale.scale_score(_t(data["f"]), h, b, p).numpy()
    k = D - int(np.round(D * p / 100))
    r = np.array([np.exp(row.sum() / np.sort(row)[::-1][:k].sum()) for row in data["h"]])
    np.testing.assert_allclose(ours, _logsumexp((r[:, None] * data["h"]) @ data["W"].T + data["b"]), rtol=1e-12)
    theirs = SCALE(backbone=None, head=lambda x: F.linear(x.flatten(1), w, b), percentile=p / 100)
    np.testing.assert_allclose(ours, -theirs.predict_feature_maps(h[:, :, None, None]).numpy(), rtol=1e-12)


def test_ash_and_scale_edge_cases_ties_and_refusals(data: dict) -> None:
    w, b = _t(data["W"]), _t(data["b"])
    zero = torch.zeros(2, D, dtype=torch.float64)  # h = 0: every variant gives logsumexp(b)
    for variant in ash.VARIANTS:
        np.testing.assert_allclose(ash.ash_score(zero, w, b, variant, 90.0).numpy(), torch.logsumexp(b, 0).item())
    np.testing.assert_allclose(scale.scale_score(b.expand(2, N), zero, b, 90.0).numpy(), torch.logsumexp(b, 0).item())
    tied = torch.tensor([[1.0, 3.0, 3.0, 0.0]], dtype=torch.float64)  # k = 1 at p = 75: the lower index wins
    assert ash.shaped(tied, "ash_p", 75.0).tolist() == [[0.0, 3.0, 0.0, 0.0]]
    assert ash.fit_nonnegative(_t(data["h_train"]), "ash_p")["feature_min"] >= 0
    with pytest.raises(UserError, match="must be >= 0"):
        ash.fit_nonnegative(_t(data["h_train"]) - 10.0, "scale")
    with pytest.raises(UserError, match="keeps no entry"):
        ash.ash_score(_t(data["h"]), w, b, "ash_b", 99.0)
    with pytest.raises(UserError, match=r"\[0, 100\)"):
        scale.scale_score(_t(data["f"]), _t(data["h"]), b, 100.0)
    assert posthoc.kept_count(10, 65.0, "ash_p") == 4 and posthoc.kept_count(10, 75.0, "ash_p") == 2  # half to even
    assert min([(p,) for p in ash.P_GRID], key=ash.tie_key) == (90.0,)
    assert sorted([(65.0,), (95.0,), (85.0,)], key=scale.tie_key) == [(85.0,), (95.0,), (65.0,)]


# --- she, klm -----------------------------------------------------------------------------------------------------

def test_she_matches_the_reference_and_pytorch_ood(data: dict) -> None:
    """Reference (means of the correctly classified per class, numpy): 1e-12 relative. pytorch-ood's SHE fitted on
    the same features and labels: ours = -theirs exactly."""
    h_train, f_train, y = data["h_train"], data["f_train"], data["y"]
    correct = f_train.argmax(axis=1) == y
    patterns = np.stack([h_train[correct & (y == c)].mean(axis=0) for c in range(N)])
    fit = she.fit_she(_t(h_train), _t(y), _t(f_train.argmax(axis=1)), N)
    ours = she.she_score(_t(data["f"]), _t(data["h"]), fit).numpy()
    expected = np.array([h_i @ patterns[f_i.argmax()] for h_i, f_i in zip(data["h"], data["f"])])
    np.testing.assert_allclose(ours, expected, rtol=1e-12)
    theirs = SHE(None, _linear(data["W"], data["b"], torch.float64)).fit_features(_t(h_train), _t(y))
    assert np.array_equal(ours, -theirs.predict_features(_t(data["h"])).detach().numpy())


def test_she_refuses_a_class_never_correct(data: dict) -> None:
    predictions = _t(data["f_train"].argmax(axis=1))
    with pytest.raises(UserError, match=r"class\(es\) \[2\] have none of the .* correctly classified"):
        she.fit_she(_t(data["h_train"]), predictions, torch.where(predictions == 2, 0, predictions), N)


def _reference_klm(train: np.ndarray, logits: np.ndarray) -> np.ndarray:
    p_train = _softmax(train)
    predicted = p_train.argmax(axis=1)
    typical = [p_train[predicted == k].mean(axis=0) for k in np.unique(predicted)]
    scores = []
    for p in _softmax(logits):
        kls = []
        for d in typical:
            kls.append(sum(0.0 if pc == 0 else (np.inf if dc == 0 else pc * np.log(pc / dc)) for pc, dc in zip(p, d)))
        scores.append(-min(kls))
    return np.array(scores)


def test_klm_matches_the_reference_and_pytorch_ood(data: dict) -> None:
    """Reference: 1e-12 relative. pytorch-ood's KLMatching (every d_k > 0 here): ours = -theirs to 1e-12 relative
    (absolute 1e-15 for KL about 0)."""
    fit = klm.fit_klm(_t(data["f_train"]))
    ours = klm.klm_score(_t(data["f"]), fit).numpy()
    np.testing.assert_allclose(ours, _reference_klm(data["f_train"], data["f"]), rtol=1e-12, atol=1e-15)
    theirs = KLMatching(None).fit_logits(_t(data["f_train"]))
    np.testing.assert_allclose(ours, -theirs.predict_logits(_t(data["f"])).detach().numpy(), rtol=1e-12, atol=1e-15)
    assert np.all(ours <= 0)


def test_klm_skips_unpredicted_classes_and_handles_zeros() -> None:
    train = torch.tensor([[5.0, 0.0, 0.0], [4.0, 1.0, 0.0], [0.0, 3.0, 0.0]], dtype=torch.float64)
    fit = klm.fit_klm(train)
    assert fit["classes"].tolist() == [0, 1]
    # p = one-hot in float64 (a logit gap of 800): the p_c = 0 terms count 0, so KL to a typical d is -log d_0
    one_hot = torch.tensor([[800.0, 0.0, 0.0]], dtype=torch.float64)
    expected = -min(-np.log(float(fit["typical"][k, 0])) for k in range(2))
    np.testing.assert_allclose(klm.klm_score(one_hot, fit).numpy(), [expected], rtol=1e-12)
    zero_typical = {"typical": torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64), "classes": torch.tensor([0])}
    assert klm.klm_score(torch.zeros(1, 3, dtype=torch.float64), zero_typical).item() == -np.inf
    with pytest.raises(UserError, match="no training logits"):
        klm.fit_klm(torch.zeros(0, 3))


# --- dice, gradnorm -----------------------------------------------------------------------------------------------

def test_dice_matches_the_reference_and_pytorch_ood(data: dict) -> None:
    """Reference (numpy percentile, strict mask): 1e-12 relative. pytorch-ood's DICE fitted under float32 (its fit
    fails with float64 as the default dtype) and scoring in float32: ours = -theirs to 1e-5 relative (no
    contribution lies within float32 rounding of the threshold here)."""
    contrib = data["h_train"].mean(axis=0)[None] * data["W"]
    threshold = np.percentile(contrib.ravel(), 90, method="linear")
    assert np.abs(contrib - threshold).min() > 1e-4 * np.abs(contrib).max()
    masked = np.where(contrib > threshold, data["W"], 0.0)
    fit = dice.fit_dice(_t(data["h_train"]), _t(data["W"]), [90.0, 50.0])
    ours = dice.dice_score(_t(data["h"]), _t(data["b"]), fit, 90.0).numpy()
    np.testing.assert_allclose(ours, _logsumexp(data["h"] @ masked.T + data["b"]), rtol=1e-12)
    theirs = DICE(None, w=_t(data["W"]).float(), b=_t(data["b"]).float(), p=0.9)
    theirs.fit_features(_t(data["h_train"]).float(), _t(data["y"]))
    np.testing.assert_allclose(ours, -theirs.predict_features(_t(data["h"]).float()).double().numpy(), rtol=1e-5)
    assert sorted([(90.0,), (95.0,)], key=dice.tie_key) == [(95.0,), (90.0,)]
    with pytest.raises(UserError, match="not p = 70"):
        dice.dice_score(_t(data["h"]), _t(data["b"]), fit, 70.0)
    with pytest.raises(UserError, match=r"\[0, 100\)"):
        dice.fit_dice(_t(data["h_train"]), _t(data["W"]), [0.9e3])


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_gradnorm_matches_the_reference_and_pytorch_ood(data: dict, temperature: float) -> None:
    """Reference: the L1 norm of the gradient of sum_c -log softmax(f / T)_c w.r.t. W, entry by entry (numpy
    outer product): 1e-12 relative. pytorch-ood's GradNorm on a Linear head fed h, restricted to its weight (it
    differentiates the mean over classes, autograd): ours = -N theirs to 1e-10 relative."""
    ours = gradnorm.gradnorm_score(_t(data["f"]), _t(data["h"]), temperature).numpy()
    p = _softmax(data["f"] / temperature)
    expected = [np.abs(np.outer((N * p_i - 1) / temperature, h_i)).sum() for p_i, h_i in zip(p, data["h"])]
    np.testing.assert_allclose(ours, expected, rtol=1e-12)
    head = _linear(data["W"], data["b"], torch.float64)
    theirs = GradNorm(head, param_filter=lambda name: name == "weight", temperature=temperature)
    np.testing.assert_allclose(ours, -N * theirs.predict(_t(data["h"])).numpy(), rtol=1e-10)
    with pytest.raises(UserError, match="temperature T must be a finite number > 0"):
        gradnorm.gradnorm_score(_t(data["f"]), _t(data["h"]), 0.0)


# --- fdbd ---------------------------------------------------------------------------------------------------------

def _reference_fdbd(s: dict, normalizer: float) -> np.ndarray:
    mu = s["h_train"].mean(axis=0)
    out = []
    for f_i, h_i in zip(s["f"], s["h"]):
        y = int(np.argmax(f_i))
        total = sum(abs(f_i[y] - f_i[c]) / np.linalg.norm(s["W"][y] - s["W"][c]) for c in range(N) if c != y)
        scale_i = np.linalg.norm(h_i - mu) if normalizer == fdbd.DISTANCE else np.linalg.norm(h_i)
        out.append(total / (N - 1) / max(scale_i, 1e-8))
    return np.array(out)


def test_fdbd_matches_the_reference_and_pytorch_ood(data: dict) -> None:
    """Reference: 1e-12 relative, both normalizers. pytorch-ood's fDBD (float32 inside): ours = -theirs to 1e-6
    relative (distance normalizer)."""
    fit = fdbd.fit_fdbd(_t(data["h_train"]), _t(data["W"]))
    for normalizer in fdbd.NORMALIZER_GRID:
        ours = fdbd.fdbd_score(_t(data["f"]), _t(data["h"]), fit, normalizer).numpy()
        np.testing.assert_allclose(ours, _reference_fdbd(data, normalizer), rtol=1e-12)
    theirs = fDBD(None, _linear(data["W"], data["b"], torch.float32)).fit_features(_t(data["h_train"]))
    ours = fdbd.fdbd_score(_t(data["f"]), _t(data["h"]), fit, fdbd.DISTANCE).numpy()
    np.testing.assert_allclose(ours, -theirs.predict_features(_t(data["h"])).double().numpy(), rtol=1e-6)
    assert min([(v,) for v in fdbd.NORMALIZER_GRID], key=fdbd.tie_key) == (fdbd.DISTANCE,)


def test_fdbd_refusals(data: dict) -> None:
    with pytest.raises(UserError, match="single output"):
        fdbd.fit_fdbd(_t(data["h_train"]), _t(data["W"][:1]))
    weight = _t(data["W"]).clone()
    weight[3] = weight[1]
    with pytest.raises(UserError, match="classes 1 and 3 have equal classifier weights"):
        fdbd.fit_fdbd(_t(data["h_train"]), weight)
    fit = fdbd.fit_fdbd(_t(data["h_train"]), _t(data["W"]))
    with pytest.raises(UserError, match="normalizer must be"):
        fdbd.fdbd_score(_t(data["f"]), _t(data["h"]), fit, 2.0)


# --- nnguide ------------------------------------------------------------------------------------------------------

def test_nnguide_matches_the_reference_and_pytorch_ood(data: dict) -> None:
    """Bank: a seeded 10% subset here (20 images). Reference (numpy, all similarities sorted): 1e-12 relative.
    pytorch-ood's NNGuide fitted on the same bank (float32 inside): ours = -theirs to 1e-6 relative."""
    index = nnguide.bank_indices(N_TRAIN, seed=3, fraction=0.1)
    assert len(index) == 20 and torch.equal(index, nnguide.bank_indices(N_TRAIN, seed=3, fraction=0.1))
    assert not torch.equal(index, nnguide.bank_indices(N_TRAIN, seed=4, fraction=0.1))
    h_bank, f_bank = data["h_train"][index.numpy()], data["f_train"][index.numpy()]
    fit = nnguide.fit_nnguide(_t(h_bank), _t(f_bank))
    ours = nnguide.nnguide_score(_t(data["f"]), _t(data["h"]), fit, [10.0, 3.0]).numpy()
    bank = h_bank / np.linalg.norm(h_bank, axis=1, keepdims=True) * _logsumexp(f_bank)[:, None]
    z = data["h"] / np.linalg.norm(data["h"], axis=1, keepdims=True)
    for row, k in enumerate((10, 3)):
        top = np.sort(z @ bank.T, axis=1)[:, ::-1][:, :k]
        np.testing.assert_allclose(ours[row], _logsumexp(data["f"]) * top.mean(axis=1), rtol=1e-12)
        theirs = NNGuide(None, _linear(data["W"], data["b"], torch.float32), k=k)
        theirs.fit_features(_t(h_bank), torch.zeros(len(h_bank), dtype=torch.long))
        np.testing.assert_allclose(ours[row], -theirs.predict_features(_t(data["h"]).float()).double().numpy(),
                                   rtol=1e-6)


def test_nnguide_refusals_and_ties(data: dict) -> None:
    fit = nnguide.fit_nnguide(_t(data["h_train"][:5]), _t(data["f_train"][:5]))
    with pytest.raises(UserError, match="k = 10 is larger than the bank"):
        nnguide.nnguide_score(_t(data["f"]), _t(data["h"]), fit, [10.0])
    with pytest.raises(UserError, match="all-zero penultimate features"):
        nnguide.fit_nnguide(torch.zeros(2, D), torch.zeros(2, N))
    with pytest.raises(UserError, match=r"fraction must lie in \(0, 1\]"):
        nnguide.bank_indices(10, seed=0, fraction=0.0)
    assert len(nnguide.bank_indices(50, seed=0)) == 1  # 1% of 50 rounds to 0: at least one image
    assert sorted([(100.0,), (10.0,)], key=nnguide.tie_key) == [(10.0,), (100.0,)]
