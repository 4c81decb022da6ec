"""The feature methods (mahalanobis, react, knn) and odin_pl.methods.features: each method's fit and scores against an
independent float64 reference (numpy loops, DESIGN's definitions) and against pytorch-ood 0.4.0 with the relation
DESIGN states; the features' check; errors and tie orders.

Tolerances (float64 throughout): fits and scores against the references to 1e-9 relative (1e-12 absolute on
bounded values); KNN distances that are about 0 to 1e-7 absolute (sqrt of a rounding error of 2 - 2 z.z');
pytorch-ood's ReAct and KNN: ours = -theirs to 1e-10; its Mahalanobis: ours = -2 n theirs up to its 1e-6 ridge
on the unnormalized scatter S, to 1e-5 / lambda_min(S) relative.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from feature_nets import N_CLASSES, features_fit_data, images, labels, make_fits, tiny_net
from pytorch_ood.detector import KNN as TheirKNN
from pytorch_ood.detector import Mahalanobis as TheirMahalanobis
from pytorch_ood.detector import MahalanobisODIN
from pytorch_ood.detector import ReAct as TheirReAct
from torch import nn

from odin_pl.methods.features import FeatureModel
from odin_pl.methods import create_method, score_batch
from odin_pl.training.module import ImageClassifier
from odin_pl.spec import ImageSpec

STD = (0.5, 0.25, 2.0)
EPSILONS = [0.0, 0.002, 0.01]
N_TRAIN = 60


@pytest.fixture(scope="module")
def setup() -> dict:
    """A float64 net, 60 training images (every class 10 times) and 7 test images; their features in numpy."""
    model = tiny_net()
    x_train, y_train, x = images(N_TRAIN, 4), labels(N_TRAIN), images(7, 5, scale=2.0)
    with torch.no_grad():
        h_train, h = (model.forward_head(model.forward_features(z), pre_logits=True).numpy() for z in (x_train, x))
    return {"model": model, "x_train": x_train, "y_train": y_train, "x": x, "h_train": h_train, "h": h,
            "y": y_train.numpy()}


def _scores(s: dict, name: str, settings: list, x: torch.Tensor | None = None) -> np.ndarray:
    fits = make_fits(s["model"], s["x_train"], s["y_train"], {name: settings})
    return score_batch(s["model"], s["x"] if x is None else x, {name: settings}, STD, fits=fits)[name].numpy()


def _features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.forward_head(model.forward_features(x), pre_logits=True)


# --- independent references (numpy loops, float64) --------------------------------------------------------------

def _reference_gaussian(h: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class means and the pseudo-inverse of the tied covariance (1/n) sum_i (h_i - mu_y_i)(h_i - mu_y_i)^T."""
    means = np.stack([h[y == c].mean(axis=0) for c in range(N_CLASSES)])
    sigma = np.zeros((h.shape[1], h.shape[1]))
    for h_i, y_i in zip(h, y):
        sigma += np.outer(h_i - means[y_i], h_i - means[y_i])
    return means, np.linalg.pinv(sigma / len(h))


def _reference_m(h: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """M(x) = max_c -(h - mu_c)^T P (h - mu_c), image by image."""
    return np.array([max(-(h_b - mu) @ precision @ (h_b - mu) for mu in means) for h_b in h])


def test_mahalanobis_fit_and_preprocessed_scores_equal_the_definition(setup) -> None:
    s = setup
    means, precision = _reference_gaussian(s["h_train"], s["y"])
    fit = create_method("mahalanobis").fit(features_fit_data(torch.from_numpy(s["h_train"]), s["y_train"]),
                                           [(0.0,)])
    np.testing.assert_allclose(fit["means"].numpy(), means, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fit["precision"].numpy(), precision, rtol=1e-9, atol=1e-9 * np.abs(precision).max())
    # The step: sign+ of the gradient of the nearest class's distance at the clean input, divided by std.
    model, x = s["model"], s["x"]
    x_leaf = x.clone().requires_grad_(True)
    h = _features(model, x_leaf)
    loss = 0
    for b in range(len(x)):
        distances = [float((s["h"][b] - mu) @ precision @ (s["h"][b] - mu)) for mu in means]
        diff = h[b] - torch.from_numpy(means[int(np.argmin(distances))])
        loss = loss + diff @ torch.from_numpy(precision) @ diff
    (g,) = torch.autograd.grad(loss, x_leaf)
    step = torch.where(g >= 0, 1.0, -1.0).double() / torch.tensor(STD, dtype=torch.float64).view(1, -1, 1, 1)
    ours = _scores(s, "mahalanobis", [(e,) for e in EPSILONS])
    for row, epsilon in enumerate(EPSILONS):
        with torch.no_grad():
            expected = _reference_m(_features(model, x - epsilon * step).numpy(), means, precision)
        np.testing.assert_allclose(ours[row], expected, rtol=1e-9)
    assert (ours[1:] > ours[0]).all()  # the step moves every image towards its nearest class


def _linear_percentile(values: np.ndarray, p: float) -> float:
    """numpy's 'linear' percentile, written out: v[lo] + (pos - lo) (v[lo + 1] - v[lo]), pos = p / 100 (n - 1)."""
    ordered, position = np.sort(values), p / 100 * (len(values) - 1)
    lo = int(np.floor(position))
    return float(ordered[lo] + (position - lo) * (ordered[min(lo + 1, len(values) - 1)] - ordered[lo]))


def test_react_thresholds_and_scores_equal_the_definition(setup) -> None:
    s = setup
    percentiles = [85.0, 90.0, 95.0, 99.0]
    fit = create_method("react").fit(features_fit_data(torch.from_numpy(s["h_train"]), s["y_train"]),
                                     [(p,) for p in percentiles])
    thresholds = [_linear_percentile(s["h_train"].ravel(), p) for p in percentiles]
    np.testing.assert_allclose(fit["thresholds"].numpy(), thresholds, rtol=1e-12)
    weight, bias = (t.detach().numpy() for t in (s["model"].fc.weight, s["model"].fc.bias))
    ours = _scores(s, "react", [(p,) for p in percentiles])
    for row, c in enumerate(thresholds):
        for b, h_b in enumerate(s["h"]):
            logits = weight @ np.minimum(h_b, c) + bias
            top = logits.max()
            assert ours[row, b] == pytest.approx(top + np.log(np.exp(logits - top).sum()), rel=1e-12)


def test_knn_scores_equal_sorted_distances_to_the_normalized_bank(setup) -> None:
    s = setup
    ks = [1, 2, 10, 60]
    bank = s["h_train"] / np.linalg.norm(s["h_train"], axis=1, keepdims=True)
    fit = create_method("knn").fit(features_fit_data(torch.from_numpy(s["h_train"]), s["y_train"]), [(k,) for k in ks])
    np.testing.assert_allclose(fit["bank"].numpy(), bank, rtol=1e-12, atol=1e-15)
    # The test images and two training images (their nearest neighbour is themselves, at distance ~0).
    x = torch.cat([s["x"], s["x_train"][[3, 17]]])
    h = np.concatenate([s["h"], s["h_train"][[3, 17]]])
    ours = _scores(s, "knn", [(k,) for k in ks], x)
    for b, h_b in enumerate(h):
        z = h_b / np.linalg.norm(h_b)
        distances = sorted(float(np.linalg.norm(z - z_i)) for z_i in bank)
        for row, k in enumerate(ks):
            expected = -distances[k - 1]
            assert ours[row, b] == pytest.approx(expected, rel=1e-9, abs=1e-7 if abs(expected) < 1e-6 else 1e-12)
    assert (np.abs(ours[0, -2:]) < 1e-7).all()


# --- pytorch-ood 0.4.0 (higher = more OOD there) ------------------------------------------------------------------

@pytest.fixture
def float64_default():
    """pytorch-ood's fitted buffers take the default dtype."""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def test_mahalanobis_is_minus_2n_times_pytorch_ood_up_to_its_ridge(setup, float64_default) -> None:
    s = setup
    model, x = s["model"], s["x"]
    h_train = torch.from_numpy(s["h_train"])
    centered = h_train - torch.stack([h_train[s["y_train"] == c].mean(0) for c in range(N_CLASSES)])[s["y_train"]]
    lambda_min = float(torch.linalg.eigvalsh(centered.T @ centered).min())
    assert lambda_min > 0.5  # well conditioned: their 1e-6 ridge moves the scores by about 2e-6 / lambda_min
    rtol = 1e-5 / lambda_min
    encoder = FeatureModel(model).features
    ours = torch.from_numpy(_scores(s, "mahalanobis", [(e,) for e in EPSILONS]))
    theirs = TheirMahalanobis(encoder).fit_features(h_train, s["y_train"])
    torch.testing.assert_close(ours[0], -2 * N_TRAIN * theirs.predict(x), rtol=rtol, atol=0)
    x_leaf = x.clone().requires_grad_(True)  # their torch.sign gives 0 at a zero gradient, ours +1: none here
    h = encoder(x_leaf)
    distances = torch.stack([((h - mu) @ theirs.precision * (h - mu)).sum(1) for mu in theirs.mu], dim=1)
    assert bool((torch.autograd.grad(distances.min(1).values.sum(), x_leaf)[0] != 0).all())
    for row, epsilon in enumerate(EPSILONS[1:], start=1):
        detector = MahalanobisODIN(encoder, eps=epsilon, norm_std=list(STD)).fit_features(h_train, s["y_train"])
        torch.testing.assert_close(ours[row], -2 * N_TRAIN * detector.predict(x).detach(), rtol=rtol, atol=0)


@pytest.mark.parametrize("percentile", [85.0, 90.0, 99.0])
def test_react_is_minus_pytorch_ood(setup, float64_default, percentile: float) -> None:
    s = setup
    feature_model = FeatureModel(s["model"])
    theirs = TheirReAct(feature_model.features, feature_model.classifier, percentile=percentile / 100)
    theirs.fit_feature_maps(torch.from_numpy(s["h_train"]), s["y_train"])
    ours = torch.from_numpy(_scores(s, "react", [(percentile,)])[0])
    torch.testing.assert_close(ours, -theirs.predict(s["x"]).detach(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("k", [1, 10, 50])
def test_knn_is_minus_pytorch_ood(setup, k: int) -> None:
    s = setup
    theirs = TheirKNN(FeatureModel(s["model"]).features, k=k)
    theirs.fit_features(torch.from_numpy(s["h_train"]), s["y_train"])
    ours = torch.from_numpy(_scores(s, "knn", [(k,)])[0])
    torch.testing.assert_close(ours, -theirs.predict(s["x"]), rtol=0, atol=1e-10)


# --- sharing, the features' check, errors -------------------------------------------------------------------------

def test_one_forward_pass_serves_every_method_and_one_gradient_every_epsilon(setup) -> None:
    """All eight methods in one plan score as each alone; Mahalanobis's epsilons take one gradient (the clean
    forward's) and, with the perturbed copies in one forward batch, one more forward."""
    s = setup
    plan = {name: create_method(name).grid()[:4] for name in ("msp", "odin", "energy", "maxlogit", "entropy",
                                                             "mahalanobis", "react", "knn")}
    plan["mahalanobis"] = [(e,) for e in EPSILONS]
    fits = make_fits(s["model"], s["x_train"], s["y_train"], plan)
    together = score_batch(s["model"], s["x"], plan, STD, fits=fits)
    for name, settings in plan.items():
        alone = score_batch(s["model"], s["x"], {name: settings}, STD, fits=fits if name in fits.tensors else None)
        torch.testing.assert_close(together[name], alone[name], rtol=0, atol=1e-12)
    calls = []
    hook = s["model"].conv.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    try:
        score_batch(s["model"], s["x"], {"mahalanobis": plan["mahalanobis"]}, STD, fits=fits,
                    forward_batch_size=len(EPSILONS) * len(s["x"]))
    finally:
        hook.remove()
    assert calls == [len(s["x"]), 2 * len(s["x"])]  # the clean forward (with its gradient), both epsilons > 0


def test_features_of_an_image_classifier_reproduce_it_and_other_models_are_refused() -> None:
    spec = ImageSpec(size=8, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3, class_names=tuple("abcd"))
    classifier = ImageClassifier("small_cnn", image_spec=spec.to_dict(), channels_last=True).double().eval()
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    feature_model = FeatureModel(classifier)
    h, logits = feature_model(x)
    assert feature_model.checked and h.shape == (3, classifier.net.num_features)
    torch.testing.assert_close(logits, classifier(x), rtol=0, atol=1e-12)

    class Scaled(nn.Module):  # a forward that does more than the classifier on the features: refused
        def __init__(self) -> None:
            super().__init__()
            self.net = tiny_net()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * self.net(x)

    with pytest.raises(ValueError, match="differs from model\\(x\\) by up to"):
        FeatureModel(Scaled())(images(2, 0))
    with pytest.raises(ValueError, match="Sequential has no forward_features, forward_head, get_classifier"):
        FeatureModel(nn.Sequential(nn.Flatten(), nn.Linear(48, 6)))
    with pytest.raises(ValueError, match="score with a fit on the in-distribution training images: pass fits"):
        score_batch(tiny_net(), images(2, 0), {"msp": [()], "knn": [(1.0,)]}, STD)


def test_fit_errors_say_what_is_wrong(setup) -> None:
    s = setup
    h = torch.from_numpy(s["h_train"])
    with pytest.raises(ValueError, match="has rank 4, below the feature dimension 5 \\(from 60 training images"):
        create_method("mahalanobis").fit(features_fit_data(torch.cat([h[:, :4], h[:, :1]], dim=1), s["y_train"]),
                                         [(0.0,)])
    with pytest.raises(ValueError, match="class\\(es\\) \\[2\\] have no image"):
        keep = s["y_train"] != 2
        create_method("mahalanobis").fit(features_fit_data(h[keep], s["y_train"][keep]), [(0.0,)])
    with pytest.raises(ValueError, match="training images \\[1\\] have all-zero penultimate features"):
        create_method("knn").fit(features_fit_data(torch.cat([h[:1], torch.zeros(1, 5)]), s["y_train"][:2]), [(1.0,)])
    react_fit = create_method("react").fit(features_fit_data(h, s["y_train"]), [(90.0,)])
    with pytest.raises(ValueError, match="thresholds for p in \\[90.0\\], not p = 95"):
        create_method("react").settings_for_fit([(95.0,)], react_fit)


def test_knn_drops_grid_values_larger_than_the_bank_and_refuses_an_explicit_one(setup) -> None:
    knn = create_method("knn")
    fit = knn.fit(features_fit_data(torch.from_numpy(setup["h_train"]), setup["y_train"]), knn.grid())
    kept, note = knn.settings_for_fit(knn.grid(), fit)
    assert kept == [(1.0,), (10.0,), (20.0,), (50.0,)] and note == (
        "knn: k = 100, 200 dropped from the grid: larger than the feature bank of 60 training images")
    assert knn.settings_for_fit([(60.0,)], fit) == ([(60.0,)], None)
    with pytest.raises(ValueError, match="k = 61 is larger than the feature bank \\(60 training images\\)"):
        knn.settings_for_fit([(61.0,)], fit)
    with pytest.raises(ValueError, match="every k of the grid \\(100, 200\\) is larger"):
        knn.settings_for_fit([(100.0,), (200.0,)], fit)


def test_settings_tie_orders_and_defaults_follow_design() -> None:
    mahalanobis, react, knn = (create_method(name) for name in ("mahalanobis", "react", "knn"))
    assert len(mahalanobis.grid()) == 21 and mahalanobis.default_setting() == (0.0,)
    assert [s[0] for s in sorted(react.grid(), key=react.tie_key)] == [90.0, 99.0, 95.0, 85.0]
    assert [s[0] for s in sorted(knn.grid(), key=knn.tie_key)] == [50.0, 1.0, 10.0, 20.0, 100.0, 200.0]
    for method, bad, message in [(react, 0.0, "must lie in \\(0, 100\\]"), (react, 101.0, "must lie in"),
                                 (knn, 2.5, "whole number >= 1"), (knn, 0.0, "whole number >= 1"),
                                 (mahalanobis, -0.001, "epsilon must be a finite number >= 0")]:
        with pytest.raises(ValueError, match=message):
            method.check_setting((bad,))
