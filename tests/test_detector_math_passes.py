"""The maths of the detectors that need more than one batch's logits and features: gram (layer outputs, a two-pass
fit), openmax (Weibull fits of training logits), mcd and mcd_var (stochastic passes), tempscale (a held-out fit).
Each against an independent float64 reference in numpy written from its paper's definition (DESIGN "More
detectors"), against pytorch-ood 0.4.0 with DESIGN's relation, and every refusal.

Inputs: seeded random float64 images, logits and small networks, continuous (no tie at an argmax or a top-k rank),
logits of moderate size (no exp overflow in pytorch-ood's OpenMax, whose clip at 709 stays inactive). Tolerances
are stated per test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pytorch_ood.detector import MCD, Gram, OpenMax, TemperatureScaling
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from odin_pl.errors import UserError
from odin_pl.methods import gram, mcd, openmax, tempscale

GOLDEN = (math.sqrt(5) - 1) / 2


def golden_minimum(f, lo: float, hi: float, tol: float = 1e-13) -> float:
    """The minimizer of a unimodal f on [lo, hi] by golden-section search (numpy reference, not our bisection)."""
    a, b = lo, hi
    c, d = b - GOLDEN * (b - a), a + GOLDEN * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol * (abs(a) + abs(b)):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - GOLDEN * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + GOLDEN * (b - a)
            fd = f(d)
    return (a + b) / 2


def grid_then_golden(f, grid: np.ndarray) -> float:
    """The minimizer of f: the best point of a dense grid, refined by golden section between its neighbours."""
    values = np.array([f(x) for x in grid])
    i = int(values.argmin())
    assert 0 < i < len(grid) - 1, "the minimum lies on the grid's edge"
    return golden_minimum(f, grid[i - 1], grid[i + 1])


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# --- gram ---------------------------------------------------------------------------------------------------------

N_GRAM = 3


def _gram_net() -> tuple[list[nn.Module], nn.Module]:
    """pytorch-ood's form of a small net: feature layers chained (conv1; relu + conv2; relu = forward_features'
    output) and the head (pool, linear), float64, its classes predicted 29, 46, 45 times on the 120 training
    images."""
    torch.manual_seed(0)
    conv1, conv2 = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, N_GRAM))
    layers, head = [m.double() for m in (conv1, nn.Sequential(nn.ReLU(), conv2), nn.ReLU())], head.double()
    with torch.no_grad():  # spread the logits and centre them on the training images, so that every class is predicted
        head[2].weight *= 300
        head[2].bias -= _run(layers, head, _images(120, 2))[0].mean(dim=0)
    return layers, head


def _run(layers: list[nn.Module], head: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    outputs = []
    with torch.no_grad():
        for layer in layers:
            x = layer(x)
            outputs.append(x)
        return head(x), outputs


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 2, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _reference_gram(maps: np.ndarray, poles: int) -> np.ndarray:
    """[poles, C] Gram row sums of one image's map [C, H, W], as Sastry and Oore define them."""
    flat = maps.reshape(maps.shape[0], -1)
    out = []
    for p in range(1, poles + 1):
        sums = ((flat**p) @ (flat**p).T).sum(axis=1)
        out.append(np.sign(sums) * np.abs(sums) ** (1 / p))
    return np.array(out)


def _reference_deviation(g: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    return float((np.maximum(lo - g, 0) / np.abs(lo + 1e-6) + np.maximum(g - hi, 0) / np.abs(hi + 1e-6)).sum())


def _reference_gram_scores(train: list[np.ndarray], predicted: np.ndarray, held: np.ndarray, msp_train: np.ndarray,
                           test: list[np.ndarray], f_test: np.ndarray, poles: int) -> np.ndarray:
    """Bounds on the rest per (class, layer, pole); n_l = mean over the held-out of delta_l / MSP (1 where 0 or
    none held out); scores -sum_l delta_l / n_l / MSP, numpy loops."""
    n_layers = len(train)
    grams = [[_reference_gram(layer[i], poles) for i in range(len(predicted))] for layer in train]
    lo = [{c: np.min([grams[j][i] for i in range(len(predicted)) if predicted[i] == c and not held[i]], axis=0)
           for c in range(N_GRAM)} for j in range(n_layers)]
    hi = [{c: np.max([grams[j][i] for i in range(len(predicted)) if predicted[i] == c and not held[i]], axis=0)
           for c in range(N_GRAM)} for j in range(n_layers)]
    norms = []
    for j in range(n_layers):
        held_dev = [_reference_deviation(grams[j][i], lo[j][predicted[i]], hi[j][predicted[i]]) / msp_train[i]
                    for i in np.flatnonzero(held)]
        mean = float(np.mean(held_dev)) if held_dev else 0.0
        norms.append(mean if mean != 0 else 1.0)
    msp, predicted_test = _softmax(f_test).max(axis=1), f_test.argmax(axis=1)
    scores = []
    for i in range(len(f_test)):
        total = sum(_reference_deviation(_reference_gram(test[j][i], poles), lo[j][predicted_test[i]],
                                         hi[j][predicted_test[i]]) / norms[j] for j in range(n_layers))
        scores.append(-total / msp[i])
    return np.array(scores)


def _fit_gram(layers, head, x_train: torch.Tensor, seed: int, poles=(10, 5), batch: int = 16) -> tuple[dict, dict]:
    """Our two-pass fit in batches: predictions, the split, pass 1 over the rest, pass 2 over the held-out."""
    logits, _ = _run(layers, head, x_train)
    predicted = logits.argmax(dim=1)
    held = gram.held_out_mask(predicted, N_GRAM, seed)
    bounds = None
    rest = x_train[~held]
    for start in range(0, len(rest), batch):
        f, outputs = _run(layers, head, rest[start:start + batch])
        bounds = gram.update_bounds(bounds, [gram.gram_features(o, max(poles)) for o in outputs], f.argmax(dim=1),
                                    N_GRAM)
    sums = torch.zeros(len(poles), len(layers), dtype=torch.float64)
    held_images = x_train[held]
    for start in range(0, len(held_images), batch):
        f, outputs = _run(layers, head, held_images[start:start + batch])
        sums = gram.update_norms(sums, [gram.gram_features(o, max(poles)) for o in outputs], bounds, f, poles)
    return gram.finish_fit(bounds, poles, sums, int(held.sum())), {"predicted": predicted, "held": held,
                                                                  "logits": logits}


def test_gram_features_match_the_reference() -> None:
    """Float64 against numpy, poles 1 .. 10: 1e-12 relative."""
    maps = _images(3, 1) * 2
    ours = gram.gram_features(maps, 10).numpy()
    for i in range(3):
        np.testing.assert_allclose(ours[:, i], _reference_gram(maps[i].numpy(), 10), rtol=1e-12)


def test_gram_fit_and_scores_match_the_reference() -> None:
    """120 training images (classes with >= 10 predictions hold some out), 7 test images, P = 10 and 5: scores to
    1e-10 relative; the split holds out int(0.1 n_c) of each class and depends on the seed only."""
    layers, head = _gram_net()
    x_train, x_test = _images(120, 2), _images(7, 3) * 1.5
    fit, info = _fit_gram(layers, head, x_train, seed=5)
    counts = torch.bincount(info["predicted"], minlength=N_GRAM)
    assert counts.min() >= 10
    assert torch.equal(torch.bincount(info["predicted"][info["held"]], minlength=N_GRAM), (counts * 0.1).long())
    assert torch.equal(info["held"], gram.held_out_mask(info["predicted"], N_GRAM, 5))
    assert not torch.equal(info["held"], gram.held_out_mask(info["predicted"], N_GRAM, 6))
    f_test, test_outputs = _run(layers, head, x_test)
    _, train_outputs = _run(layers, head, x_train)
    grams = [gram.gram_features(o, 10) for o in test_outputs]
    msp_train = _softmax(info["logits"].numpy()).max(axis=1)
    for poles in (10, 5):
        expected = _reference_gram_scores([o.numpy() for o in train_outputs], info["predicted"].numpy(),
                                          info["held"].numpy(), msp_train, [o.numpy() for o in test_outputs],
                                          f_test.numpy(), poles)
        ours = gram.gram_score(f_test, grams, fit, float(poles)).numpy()
        np.testing.assert_allclose(ours, expected, rtol=1e-10)
        assert np.all(ours <= 0) and np.any(ours < 0)


def test_gram_matches_pytorch_ood(float64_default) -> None:
    """pytorch-ood's Gram with validation_fraction 0, labels = predictions and the same layers; our fit on 24
    images (every class under 10, so none is held out and n_l = 1): our score x MSP = -theirs to 1e-12 relative."""
    layers, head = _gram_net()
    x_train, x_test = _images(18, 4), _images(6, 5) * 1.5
    fit, info = _fit_gram(layers, head, x_train, seed=0, poles=(5,))
    assert not info["held"].any() and torch.equal(fit["norms"], torch.ones(1, 3, dtype=torch.float64))
    theirs = Gram(head, layers, num_classes=N_GRAM, num_poles_list=list(range(1, 6)))
    theirs.validation_fraction = 0.0
    theirs.fit(DataLoader(TensorDataset(x_train, info["predicted"]), batch_size=10))
    f_test, outputs = _run(layers, head, x_test)
    ours = gram.gram_score(f_test, [gram.gram_features(o, 5) for o in outputs], fit, 5.0)
    msp = torch.softmax(f_test, dim=1).amax(dim=1)
    np.testing.assert_allclose((ours * msp).numpy(), -theirs.predict(x_test).numpy(), rtol=1e-12)


def test_gram_refusals_and_ties() -> None:
    with pytest.raises(UserError, match=r"class\(es\) \[1\] are never predicted"):
        gram.held_out_mask(torch.tensor([0, 2, 2, 0]), 3, seed=0)
    g = [torch.zeros(2, 2, 4, dtype=torch.float64)]
    bounds = gram.update_bounds(None, g, torch.tensor([0, 0]), 2)
    with pytest.raises(UserError, match=r"class\(es\) \[1\] have no training image outside the held-out part"):
        gram.finish_fit(bounds, (2,), torch.zeros(1, 1), 0)
    bounds = gram.update_bounds(bounds, g, torch.tensor([1, 1]), 2)
    fit = gram.finish_fit(bounds, (2,), torch.zeros(1, 1), 0)
    with pytest.raises(UserError, match="not P = 3"):
        gram.gram_score(torch.zeros(2, 2), g, fit, 3.0)
    with pytest.raises(UserError, match="hold 2 poles, fewer than P = 10"):
        gram.gram_score(torch.zeros(2, 2), g, gram.finish_fit(bounds, (10,), torch.zeros(1, 1), 0), 10.0)
    assert sorted([(5.0,), (10.0,)], key=gram.tie_key) == [(10.0,), (5.0,)]


# --- openmax ------------------------------------------------------------------------------------------------------

N_OPEN = 5


@pytest.fixture(scope="module")
def logits_data() -> dict:
    """300 training logits around 5 class centres (labels = the centre; some misclassified), 40 test logits in
    which every class is the argmax of some row."""
    rng = np.random.default_rng(7)
    centres = np.eye(N_OPEN) * 6.0
    labels = np.arange(300) % N_OPEN
    train = centres[labels] + rng.normal(size=(300, N_OPEN)) * 1.5
    test = centres[np.arange(40) % N_OPEN] * rng.uniform(0.2, 1.2, size=(40, 1)) + rng.normal(size=(40, N_OPEN))
    assert set(test.argmax(axis=1)) == set(range(N_OPEN))
    correct = train.argmax(axis=1) == labels
    assert 0.7 < correct.mean() < 1 and np.bincount(labels[correct]).min() >= 50
    return {"train": train, "labels": labels, "test": test, "correct": correct}


def _reference_weibull(tail: np.ndarray) -> tuple[float, float]:
    """(kappa, lambda) maximizing the Weibull likelihood (location 0) of t = tail + 10000 - min(tail): the profile
    log-likelihood n log k + (k - 1) sum log t - n log mean t^k - n, by a dense grid in log k and golden section."""
    s = np.log(tail + 10000 - tail.min())
    shifted = s - s.max()  # the profile in terms of s - max s: no cancellation between terms of size k s

    def negative_profile(log_k: float) -> float:
        k = np.exp(log_k)
        return -(log_k + k * shifted.mean() - s.mean() - np.log(np.mean(np.exp(k * shifted))))

    log_k = grid_then_golden(negative_profile, np.linspace(-5, 25, 3001))
    k = np.exp(log_k)
    scale = np.exp(s.max() + np.log(np.mean(np.exp(k * shifted))) / k)
    return k, scale


def _reference_openmax(s: dict, tailsize: int, alpha: int, eucos: bool) -> tuple[np.ndarray, list]:
    kept, labels = s["train"][s["correct"]], s["labels"][s["correct"]]
    means = np.stack([kept[labels == c].mean(axis=0) for c in range(N_OPEN)])

    def dist(f: np.ndarray, c: int) -> float:
        euclid = np.linalg.norm(f - means[c])
        if not eucos:
            return euclid
        return euclid / 200 + 1 - f @ means[c] / (np.linalg.norm(f) * np.linalg.norm(means[c]))

    models = []
    for c in range(N_OPEN):
        tail = np.sort([dist(f, c) for f in kept[labels == c]])[-tailsize:]
        models.append((*_reference_weibull(tail), tail.min()))
    scores = []
    for f in s["test"]:
        order = np.argsort(-f, kind="stable")[:alpha]
        omega = np.zeros(N_OPEN)
        omega[order] = [(alpha + 1 - i) / alpha for i in range(1, alpha + 1)]
        w = np.array([1 - np.exp(-((dist(f, c) + 10000 - m) / lam) ** k) for c, (k, lam, m) in enumerate(models)])
        v = np.r_[(f * omega * w).sum(), f * (1 - omega * w)]
        scores.append(-_softmax(v[None])[0, 0])
    return np.array(scores), models


@pytest.mark.parametrize("tailsize, alpha, eucos", [(20, 3, False), (10, 5, True), (20, 1, True)])
def test_openmax_matches_the_reference(logits_data: dict, tailsize: int, alpha: int, eucos: bool) -> None:
    """Weibull shape and scale against a grid + golden-section maximum of the profile likelihood: 1e-6 relative
    (golden section locates a flat maximum to about sqrt(eps)); scores to 1e-6 absolute."""
    distance = openmax.EUCOS if eucos else openmax.EUCLIDEAN
    fit = openmax.fit_openmax(torch.from_numpy(logits_data["train"]), torch.from_numpy(logits_data["labels"]),
                              [(float(tailsize), distance)])
    expected, models = _reference_openmax(logits_data, tailsize, alpha, eucos)
    np.testing.assert_allclose(fit["kappa"][0].numpy(), [m[0] for m in models], rtol=1e-6)
    np.testing.assert_allclose(fit["scale"][0].numpy(), [m[1] for m in models], rtol=1e-9)
    ours = openmax.openmax_score(torch.from_numpy(logits_data["test"]), fit, float(tailsize), float(alpha), distance)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=1e-6)
    assert np.all((ours.numpy() >= -1) & (ours.numpy() <= 0))


def test_openmax_matches_pytorch_ood(logits_data: dict) -> None:
    """pytorch-ood's OpenMax fitted on the correct training logits only, euclid_weight 1 (its scipy Weibull fit is
    numerical; every class is some test row's argmax, as its predict computes distances only for those):
    ours = -theirs to 1e-6 absolute."""
    correct = logits_data["correct"]
    train, labels = torch.from_numpy(logits_data["train"]), torch.from_numpy(logits_data["labels"])
    for tailsize, alpha in ((20, 3), (10, 5)):
        theirs = OpenMax(None, tailsize=tailsize, alpha=alpha, euclid_weight=1.0)
        theirs.fit_logits(train[correct], labels[correct])
        fit = openmax.fit_openmax(train, labels, [(float(tailsize), openmax.EUCLIDEAN)])
        ours = openmax.openmax_score(torch.from_numpy(logits_data["test"]), fit, float(tailsize), float(alpha),
                                     openmax.EUCLIDEAN)
        np.testing.assert_allclose(ours.numpy(), -theirs.predict_logits(torch.from_numpy(logits_data["test"])).numpy(),
                                   rtol=0, atol=1e-6)


def test_openmax_refusals_and_ties(logits_data: dict) -> None:
    train, labels = torch.from_numpy(logits_data["train"]), torch.from_numpy(logits_data["labels"])
    with pytest.raises(UserError, match=r"class\(es\) \[4\] have no correctly classified"):
        openmax.fit_openmax(train, labels.where(labels != 4, 0), [(10.0, openmax.EUCLIDEAN)])
    with pytest.raises(UserError, match="tail size 500 is larger than the"):
        openmax.fit_openmax(train, labels, [(500.0, openmax.EUCLIDEAN)])
    same = torch.tensor([[3.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0], [0.0, 7.0]], dtype=torch.float64)
    with pytest.raises(UserError, match=r"class\(es\) \[0\] to their mean logit are all equal"):
        openmax.fit_openmax(same, torch.tensor([0, 0, 1, 1, 1]), [(2.0, openmax.EUCLIDEAN)])
    fit = openmax.fit_openmax(train, labels, [(10.0, openmax.EUCLIDEAN)])
    with pytest.raises(UserError, match="alpha = 6 is larger than the 5 classes"):
        openmax.openmax_score(train, fit, 10.0, 6.0, openmax.EUCLIDEAN)
    with pytest.raises(UserError, match="no Weibull models for tail size 20"):
        openmax.openmax_score(train, fit, 20.0, 1.0, openmax.EUCLIDEAN)
    settings = [(t, a, d) for t in openmax.TAILSIZE_GRID for a in openmax.ALPHA_GRID for d in openmax.DISTANCE_GRID]
    assert min(settings, key=openmax.tie_key) == (20.0, 10.0, openmax.EUCLIDEAN)


# --- mcd, mcd_var -------------------------------------------------------------------------------------------------

def _dropout_net() -> nn.Module:
    """A net whose only train/eval-dependent modules are BatchNorm and Dropout, float64, in eval mode."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.4), nn.Linear(16, 4)).double()
    with torch.no_grad():
        net(torch.randn(32, 6, dtype=torch.float64))  # not trained: running statistics stay at their defaults
    return net.eval()


def _our_passes(net: nn.Module, x: torch.Tensor, seed: int) -> torch.Tensor:
    """What the mcd wrapper does: seeded, eval mode except the dropout modules, 30 softmax passes stacked."""
    torch.manual_seed(seed)
    dropouts = [m for m in net.modules() if isinstance(m, nn.Dropout) and m.p > 0]
    for m in dropouts:
        m.train()
    with torch.no_grad():
        stack = torch.stack([torch.softmax(net(x), dim=1) for _ in range(mcd.PASSES)])
    for m in dropouts:
        m.eval()
    return stack


def test_mcd_matches_the_reference_and_pytorch_ood(float64_default) -> None:
    """Reference (numpy mean, max, var ddof 1): 1e-12 relative. pytorch-ood's MCD with the same seed and 30
    passes (it puts the model in train mode, BatchNorm back in eval): ours = -theirs exactly (its stacked run;
    its mean mode to 1e-15, a running sum)."""
    net, x = _dropout_net(), torch.randn(8, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    stack = _our_passes(net, x, seed=11)
    mean, var = mcd.mcd_score(stack), mcd.mcd_var_score(stack)
    np.testing.assert_allclose(mean.numpy(), stack.numpy().mean(axis=0).max(axis=1), rtol=1e-12)
    np.testing.assert_allclose(var.numpy(), -stack.numpy().var(axis=0, ddof=1).mean(axis=1), rtol=1e-12)
    torch.manual_seed(11)
    their_mean, their_var = MCD.run(net, x, mcd.PASSES)
    assert torch.equal(mean, their_mean) and torch.equal(var, -their_var)
    torch.manual_seed(11)
    assert torch.equal(var, -MCD(net, samples=mcd.PASSES, mode="var").predict(x))
    assert not net.training
    torch.manual_seed(11)  # its mean mode adds the passes into a running sum: the same to 1 ulp (float64 default)
    np.testing.assert_allclose(mean.numpy(), -MCD(net, samples=mcd.PASSES, mode="mean").predict(x).numpy(),
                               rtol=1e-15)
    low, high = mcd.mcd_var_range()
    assert bool((var >= low).all() and (var < high).all() and (mean >= 0.25).all() and (mean <= 1).all())
    assert mcd.mcd_range(4) == (0.25, 1.0)


def test_mcd_var_bound_and_refusals() -> None:
    """The bound -n / (4 (n - 1)) is reached by a class split 0/1 half the passes (two classes here, so the mean
    over classes is that bound)."""
    n = mcd.PASSES
    stack = torch.zeros(n, 1, 2, dtype=torch.float64)
    stack[: n // 2, 0, 0] = 1.0
    stack[n // 2:, 0, 1] = 1.0
    np.testing.assert_allclose(mcd.mcd_var_score(stack).numpy(), [mcd.mcd_var_range()[0]], rtol=1e-12)
    with pytest.raises(UserError, match="at least 2 passes"):
        mcd.mcd_score(torch.zeros(1, 3, 4))
    with pytest.raises(UserError, match="at least 2 passes"):
        mcd.mcd_var_score(torch.zeros(3, 4))


# --- tempscale ----------------------------------------------------------------------------------------------------

def _held_out_logits(seed: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    """400 overconfident logits of 6 classes, 80% labelled with their argmax."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, size=400)
    logits = rng.normal(size=(400, 6)) * 2
    logits[np.arange(400), labels] += 4.0
    return torch.from_numpy(logits * 3), torch.from_numpy(labels)


def test_tempscale_fit_matches_an_independent_minimizer() -> None:
    """beta* = 1/T* against numpy's NLL minimized by a dense grid of beta plus golden section: 1e-6 relative
    (golden section locates the flat minimum of a smooth convex function to about sqrt(eps))."""
    logits, labels = _held_out_logits()
    f, y = logits.numpy(), labels.numpy()

    def nll(beta: float) -> float:
        z = beta * f
        top = z.max(axis=1)
        return float(np.mean(top + np.log(np.exp(z - top[:, None]).sum(axis=1)) - z[np.arange(len(y)), y]))

    beta = grid_then_golden(nll, np.linspace(1e-3, 3.0, 3001))
    fit = tempscale.fit_tempscale(logits, labels)
    np.testing.assert_allclose(1 / fit["temperature"].item(), beta, rtol=1e-6)
    assert fit["temperature"].item() > 1  # the logits were made overconfident
    assert abs(tempscale.nll_slope(logits, labels, 1 / fit["temperature"].item())) < 1e-12


def test_tempscale_scores_match_pytorch_ood(float64_default) -> None:
    """pytorch-ood's TemperatureScaling at the same T (set, not fitted: its LBFGS fit is not converged):
    ours = -theirs exactly (float64)."""
    logits, labels = _held_out_logits()
    fit = tempscale.fit_tempscale(logits, labels)
    theirs = TemperatureScaling(None)
    with torch.no_grad():
        theirs.t.copy_(fit["temperature"])
    theirs._is_fitted = True
    ours = tempscale.tempscale_score(logits, fit)
    assert torch.equal(ours, -theirs.predict_logits(logits).detach())
    low, high = tempscale.tempscale_range(6)
    assert bool((ours >= low).all() and (ours <= high).all())


def test_tempscale_refusals() -> None:
    logits, labels = _held_out_logits()
    with pytest.raises(UserError, match="every image classified correctly"):
        tempscale.fit_tempscale(logits, logits.argmax(dim=1))
    with pytest.raises(UserError, match="no higher than the mean logit"):
        tempscale.fit_tempscale(logits, logits.argmin(dim=1))
    with pytest.raises(UserError, match="no held-out labelled images"):
        tempscale.fit_tempscale(logits[:0], labels[:0])
