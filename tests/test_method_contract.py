"""The method contract (odin_pl.methods.base, .batch): adding a logit method, a fitted feature method and a method
that reads intermediate layers is each one file (written here to tmp_path, imported, and unregistered afterwards),
scored through score_batch and the protocol against independent float64 references; the batch computes only what
a plan declares (forward and backward passes counted with hooks); seeded stochastic passes; held-out fits.

Tolerances: float64 references to 1e-12 (relative to the scores' size); pytorch-ood's MCD.run (max of the mean
softmax of its stacked passes): exactly equal.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from feature_nets import N_CLASSES, TinyFeatureNet, images, labels, make_fits, tiny_net
from pytorch_ood.detector import MCD
from torch import nn
from torch.utils.data import TensorDataset

from odin_pl.methods import Batch, Layers, Needs, create_method, score_batch
from odin_pl.methods import registry as method_registry
from odin_pl.methods.batch import stochastic_seed
from odin_pl.protocol.fits import heldout_set, load_fit, prepare_fits
from odin_pl.protocol import MethodGrid, ModelScorer, ProtocolPlan, run_protocol
from odin_pl.protocol.run import IN_DISTRIBUTION

STD = (0.5, 0.25, 2.0)

LOGIT_METHOD = '''
"""logit_gap_for_test: the gap between the largest and the mean logit, max f - mean f."""
from odin_pl.methods import Method, register_method


@register_method
class LogitGap(Method):
    name = "logit_gap_for_test"

    def score(self, batch, settings):
        f = batch.logits
        return (f.amax(dim=1) - f.mean(dim=1)).expand(len(settings), -1).clone()
'''

FEATURE_METHOD = '''
"""class_cosine_for_test: cos(h, m_y_hat) + b_y_hat + a_y_hat, y_hat = argmax f, m_c = the mean training h of class
c, a_c = the fraction of class c's training images predicted c; fitted on the training features, labels,
predictions and the classifier's bias."""
import torch

from odin_pl.methods import Method, Needs, register_method


@register_method
class ClassCosine(Method):
    name = "class_cosine_for_test"
    needs_fit = True

    def needs(self, settings, fit=None):
        return Needs(features=True)

    def fit(self, data, settings):
        classes = range(data.logits.shape[1])
        means = torch.stack([data.features[data.labels == c].mean(dim=0) for c in classes])
        agreement = torch.stack([(data.predictions[data.labels == c] == c).double().mean() for c in classes])
        return {"means": means, "bias": data.classifier.bias.double() + agreement}

    def score(self, batch, settings):
        fit, h = batch.fit(self.name), batch.features.double()
        y_hat = batch.logits.argmax(dim=1)
        m = fit["means"][y_hat]
        cosine = (h * m).sum(dim=1) / (h.norm(dim=1) * m.norm(dim=1))
        return (cosine + fit["bias"][y_hat]).expand(len(settings), -1).clone()
'''

LAYER_METHOD = '''
"""layer_deviation_for_test: -sum over layers l and channels c of |mu_lc(x) - M_lc| / S_lc, mu_lc(x) = the spatial
mean of channel c of layer l (every Conv2d and forward_features' output, in call order); M, S = mean and std of
mu over the training images, from a second pass over them that reads the layers."""
import torch
from torch import nn

from odin_pl.methods import Layers, Method, Needs, register_method

LAYERS = Layers((nn.Conv2d,), forward_features=True)


def channel_means(batch):
    return torch.cat([out.double().mean(dim=(2, 3)) for out in batch.layers(LAYERS)], dim=1)


@register_method
class LayerDeviation(Method):
    name = "layer_deviation_for_test"
    needs_fit = True

    def needs(self, settings, fit=None):
        return Needs(layers=(LAYERS,))

    def fit(self, data, settings):
        mu = torch.cat([channel_means(batch) for batch, _ in data.batches(self.needs(settings))])
        return {"mean": mu.mean(dim=0), "std": mu.std(dim=0)}

    def score(self, batch, settings):
        fit = batch.fit(self.name)
        deviation = ((channel_means(batch) - fit["mean"]).abs() / fit["std"]).sum(dim=1)
        return (-deviation).expand(len(settings), -1).clone()
'''

STOCHASTIC_METHOD = '''
"""mc_mean_for_test: max_c of the mean softmax over 4 seeded stochastic passes (Monte Carlo dropout)."""
import torch

from odin_pl.methods import Method, Needs, register_method


@register_method
class MCMean(Method):
    name = "mc_mean_for_test"

    def needs(self, settings, fit=None):
        return Needs(passes=4)

    def score(self, batch, settings):
        p = torch.softmax(batch.stochastic_logits(4), dim=2).mean(dim=0)
        return p.amax(dim=1).expand(len(settings), -1).clone()
'''

SHARED_LOSS_METHOD = '''
"""step_mass_for_test: -mean |step| of ODIN's loss at T = 10 (a method that declares a loss another one declares)."""
from odin_pl.methods import Method, Needs, register_method
from odin_pl.methods.odin import temperature_loss


@register_method
class StepMass(Method):
    name = "step_mass_for_test"

    def needs(self, settings, fit=None):
        return Needs(losses=(temperature_loss(10.0),))

    def score(self, batch, settings):
        step = batch.step(temperature_loss(10.0))
        return -step.abs().mean(dim=(1, 2, 3)).expand(len(settings), -1).clone()
'''


@pytest.fixture
def method_file(tmp_path: Path) -> Iterator:
    """add(source): a method added as a user would (one file, one import); registered only inside the test."""
    added: list[str] = []
    sys.path.insert(0, str(tmp_path))

    def add(source: str) -> str:
        module = f"method_{len(added)}"
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        before = set(method_registry.list_methods())
        importlib.import_module(module)
        added.append(module)
        (name,) = set(method_registry.list_methods()) - before
        return name

    yield add
    sys.path.remove(str(tmp_path))
    for module in added:
        for name, cls in list(method_registry._METHODS.items()):
            if cls.__module__ == module:
                del method_registry._METHODS[name]
        del sys.modules[module]


def _logits(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).numpy()


def _features(model: TinyFeatureNet, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model.forward_head(model.forward_features(x), pre_logits=True).numpy()


def _sets() -> tuple[TensorDataset, dict[str, TensorDataset]]:
    g = torch.Generator().manual_seed(2)
    in_set = TensorDataset(torch.randn(40, 3, 4, 4, generator=g, dtype=torch.float64), torch.zeros(40))
    return in_set, {"ood": TensorDataset(3 * torch.randn(30, 3, 4, 4, generator=g, dtype=torch.float64),
                                         -torch.ones(30))}


def _check_protocol(model: nn.Module, name: str, reference, fits=None) -> None:
    """run_protocol's test scores of the method (in-distribution and OOD) equal reference(images)."""
    in_set, ood = _sets()
    result = run_protocol(ProtocolPlan((MethodGrid.of(name),)), in_set, ood,
                          ModelScorer(model, STD, batch_size=16, fits=fits))
    s_in, s_out = result.test_scores["ood"][name]
    for dataset, split, scores in ((in_set, IN_DISTRIBUTION, s_in), (ood["ood"], "ood", s_out)):
        expected = reference(dataset.tensors[0][result.splits[split].test])
        np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())


def test_a_logit_method_is_one_file(method_file) -> None:
    name = method_file(LOGIT_METHOD)
    model, x = tiny_net(), images(9, 1, scale=3.0)

    def reference(z: torch.Tensor) -> np.ndarray:
        f = _logits(model, z)
        return f.max(axis=1) - f.mean(axis=1)

    scores = score_batch(model, x, {name: [()]}, STD)[name]
    np.testing.assert_allclose(scores[0].numpy(), reference(x), rtol=1e-12)
    _check_protocol(model, name, reference)


def _class_cosine_reference(model: TinyFeatureNet, x_train: torch.Tensor, y_train: torch.Tensor):
    h_train, predicted, y = _features(model, x_train), _logits(model, x_train).argmax(axis=1), y_train.numpy()
    means = np.stack([h_train[y == c].mean(axis=0) for c in range(N_CLASSES)])
    bias = model.fc.bias.detach().numpy() + np.array([(predicted[y == c] == c).mean() for c in range(N_CLASSES)])

    def reference(z: torch.Tensor) -> np.ndarray:
        h, y_hat = _features(model, z), _logits(model, z).argmax(axis=1)
        return np.array([h_b @ means[c] / np.linalg.norm(h_b) / np.linalg.norm(means[c]) + bias[c]
                         for h_b, c in zip(h, y_hat)])

    return reference


def test_a_fitted_feature_method_is_one_file(method_file, tmp_path) -> None:
    name = method_file(FEATURE_METHOD)
    model, x = tiny_net(), images(9, 1, scale=3.0)
    x_train = images(120, 4)
    assert 0 < (_logits(model, x_train).argmax(axis=1) == labels(120).numpy()).sum() < 120
    run = prepare_fits(model, [MethodGrid.of(name)], TensorDataset(x_train, labels(120)), folder=tmp_path / "fits",
                       weights_sha256="w", batch_size=32)
    assert load_fit(tmp_path / "fits" / f"{name}.pt").context["train_images_sha256"]
    reference = _class_cosine_reference(model, x_train, labels(120))
    scores = score_batch(model, x, {name: [()]}, STD, fits=run.fits)[name]
    np.testing.assert_allclose(scores[0].numpy(), reference(x), rtol=1e-12)
    _check_protocol(model, name, reference, run.fits)


def test_a_method_may_fit_on_a_held_out_split(method_file, tmp_path) -> None:
    """fit_split = "heldout": the fit is made on the held-out images, never the training ones; the DataModule's
    validation split where it has one (val_split > 0), else the in-distribution tuning split."""
    name = method_file(FEATURE_METHOD)
    create_method(name).__class__.fit_split = "heldout"
    model, x = tiny_net(), images(9, 1, scale=3.0)
    train, held_out = TensorDataset(images(60, 4), labels(60)), TensorDataset(images(120, 7), labels(120))
    assert heldout_set(object(), held_out) is held_out
    with pytest.raises(ValueError, match="fit on the heldout split, which this run does not have"):
        prepare_fits(model, [MethodGrid.of(name)], train, folder=tmp_path / "none", weights_sha256="w")
    run = prepare_fits(model, [MethodGrid.of(name)], train, heldout=held_out, folder=tmp_path / "fits",
                       weights_sha256="w", batch_size=32)
    context = load_fit(tmp_path / "fits" / f"{name}.pt").context
    assert "train_images_sha256" not in context and context["n_images"] == 120
    reference = _class_cosine_reference(model, *held_out.tensors)
    np.testing.assert_allclose(score_batch(model, x, {name: [()]}, STD, fits=run.fits)[name][0].numpy(),
                               reference(x), rtol=1e-12)


def test_a_method_that_reads_intermediate_layers_is_one_file(method_file, tmp_path) -> None:
    """Layers in call order (the Conv2d's output, then forward_features' = tanh of it), fitted in a second pass."""
    name = method_file(LAYER_METHOD)
    model, x, x_train = tiny_net(), images(9, 1, scale=3.0), images(60, 4)
    run = prepare_fits(model, [MethodGrid.of(name)], TensorDataset(x_train, labels(60)), folder=tmp_path / "fits",
                       weights_sha256="w", batch_size=16)

    def channel_means(z: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            conv = model.conv(z).numpy()
        return np.concatenate([conv.mean(axis=(2, 3)), np.tanh(conv).mean(axis=(2, 3))], axis=1)

    mu = channel_means(x_train)
    mean, std = mu.mean(axis=0), mu.std(axis=0, ddof=1)

    def reference(z: torch.Tensor) -> np.ndarray:
        return -(np.abs(channel_means(z) - mean) / std).sum(axis=1)

    scores = score_batch(model, x, {name: [()]}, STD, fits=run.fits)[name]
    np.testing.assert_allclose(scores[0].numpy(), reference(x), rtol=1e-12)
    _check_protocol(model, name, reference, run.fits)


class _Counted:
    """Counts the forward passes (images per pass) and backward passes through a TinyFeatureNet's conv."""

    def __init__(self, model: TinyFeatureNet) -> None:
        self.forwards: list[int] = []
        self.backwards = 0
        model.conv.register_forward_hook(lambda module, args, out: self.forwards.append(len(args[0])))
        model.conv.register_full_backward_hook(lambda module, grad_in, grad_out: self._backward())

    def _backward(self) -> None:
        self.backwards += 1


def test_the_batch_computes_only_what_the_plan_declares(method_file) -> None:
    model, x = tiny_net(), images(5, 1, scale=3.0)
    plan = {"msp": [()], "energy": [(1.0,), (10.0,)], "maxlogit": [()], "entropy": [()], "react": [(90.0,)],
            "knn": [(1.0,)], "mahalanobis": [(0.0,)], "odin": [(1.0, 0.0), (1000.0, 0.0)]}
    fits = make_fits(model, images(60, 4), labels(60), plan)  # checks the features (one more forward) once
    counted = _Counted(model)
    score_batch(model, x, plan, STD, fits=fits)
    assert counted.forwards == [5] and counted.backwards == 0  # one forward for every logit and feature method
    # Distinct declared losses: ODIN's at T = 10 and T = 1000 (two epsilons each) and Mahalanobis's: 3 backwards
    # on one forward graph, then the perturbed copies (one stacked forward per loss).
    plan = {**plan, "odin": [(10.0, 0.001), (10.0, 0.002), (1000.0, 0.0), (1000.0, 0.004), (1000.0, 0.001)],
            "mahalanobis": [(0.0,), (0.002,)]}
    counted.forwards.clear()
    score_batch(model, x, plan, STD, forward_batch_size=10, fits=fits)
    assert counted.backwards == 3 and counted.forwards == [5, 5, 10, 10]  # clean; Mahalanobis; ODIN at 10, 1000
    # A loss that two methods declare (equal keys) takes one backward.
    shared = method_file(SHARED_LOSS_METHOD)
    counted.backwards = 0
    scores = score_batch(model, x, {"odin": [(10.0, 0.001)], shared: [()]}, STD)
    assert counted.backwards == 1
    torch.testing.assert_close(scores[shared][0], -(1 / torch.tensor(STD, dtype=torch.float64)).mean().expand(5),
                               rtol=1e-15, atol=0)
    # Nothing until used; once when used; an undeclared need is refused.
    counted.forwards.clear()
    batch = Batch(model, x, needs=Needs(logits=True))
    assert counted.forwards == []
    assert torch.equal(batch.logits, batch.logits) and counted.forwards == [5]
    with pytest.raises(KeyError, match="not asked for the penultimate features"):
        print(batch.features)
    with pytest.raises(KeyError, match="not asked for the layers"):
        batch.layers(Layers((nn.Conv2d,)))


class _DropoutNet(nn.Module):
    """Only Linear, BatchNorm and Dropout (what pytorch-ood's MCD switches the same way)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.BatchNorm1d(16), nn.Dropout(0.5),
                                 nn.Linear(16, N_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_seeded_stochastic_passes_depend_only_on_the_seed_and_the_first_index(method_file) -> None:
    name = method_file(STOCHASTIC_METHOD)
    model, x = _DropoutNet().double().eval(), images(6, 1)

    def scores(seed: int, start: int) -> torch.Tensor:
        return score_batch(model, x, {name: [()]}, seed=seed, start=start)[name][0]

    passes: list[int] = []
    model.net[1].register_forward_hook(lambda module, args, out: passes.append(len(args[0])))
    first = scores(3, 12)
    assert passes == [6] * 4  # the 4 passes, no clean forward
    torch.rand(5)  # the global generator's state does not matter, and is left as it was
    state = torch.get_rng_state()
    assert torch.equal(scores(3, 12), first) and torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(scores(3, 13), first) and not torch.equal(scores(4, 12), first)
    assert not model.training and not model.net[3].training
    torch.manual_seed(stochastic_seed(3, 12))  # pytorch-ood's MCD (its stacked passes) with the same seed and passes
    assert torch.equal(first, MCD.run(model, x, 4)[0])
    with pytest.raises(ValueError, match="need the run seed and the batch's first global index"):
        score_batch(model, x, {name: [()]})
    with pytest.raises(ValueError, match="TinyFeatureNet has no dropout module"):
        score_batch(tiny_net(), x, {name: [()]}, seed=0, start=0)
