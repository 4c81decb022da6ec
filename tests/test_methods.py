"""odin_pl.methods: each method against an independent float64 reference of its paper's definition and against
pytorch-ood 0.4.0 (DESIGN, "Other detectors"), the registry, and a contract every registered method must keep
(the feature methods' references are in test_feature_methods.py).

Tolerances: references in float64 to 1e-12 (relative to the scores' size); pytorch-ood: ours = -theirs to 1e-10.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from feature_nets import make_fits
from method_cases import ORIGINAL, case, near_and_far, proto_images
from pytorch_ood.detector import ODIN as TheirODIN
from pytorch_ood.detector import EnergyBased, Entropy, MaxLogit, MaxSoftmax
from torch import nn
from torch.utils.data import TensorDataset

from odin_pl.deploy.detector import Detector
from odin_pl.methods.features import Fits
from odin_pl.protocol.fits import save_fit
from odin_pl.methods import Method, create_method, list_methods, register_method, score_batch
from odin_pl.methods import registry as method_registry
from odin_pl.protocol import MethodGrid, ModelScorer, ProtocolPlan, run_protocol
from odin_pl.methods.batch import Batch
from odin_pl.methods.msp import max_softmax
from odin_pl.methods.odin import score_settings
from odin_pl.spec import ImageSpec

N_CLASSES = 6
STD = (0.5, 0.25, 2.0)


def _model(dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, N_CLASSES)).to(dtype).eval()


def _images(n: int = 9, dtype: torch.dtype = torch.float64, scale: float = 3.0) -> torch.Tensor:
    return scale * torch.randn(n, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=dtype)


def _logits(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).numpy().astype(np.float64)


def _logsumexp(a: np.ndarray) -> np.ndarray:
    top = a.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(a - top).sum(axis=1, keepdims=True)))[:, 0]


def _scores(name: str, x: torch.Tensor, settings: list, model: nn.Module | None = None) -> torch.Tensor:
    return score_batch(model or _model(x.dtype), x, {name: settings}, STD)[name]


# --- independent references (numpy, float64) ------------------------------------------------------------------

def test_msp_maxlogit_energy_and_entropy_equal_their_definitions_in_float64() -> None:
    x = _images()
    f = _logits(_model(), x)
    p = np.exp(f - _logsumexp(f)[:, None])
    references = {"msp": (p.max(axis=1), [()]), "maxlogit": (f.max(axis=1), [()]),
                  "entropy": ((p * np.log(p)).sum(axis=1), [()])}
    for name, (expected, settings) in references.items():
        np.testing.assert_allclose(_scores(name, x, settings)[0].numpy(), expected, rtol=1e-12, atol=1e-14)
    temperatures = [1.0, 2.0, 1000.0]
    energy = _scores("energy", x, [(t,) for t in temperatures]).numpy()
    for row, t in enumerate(temperatures):
        np.testing.assert_allclose(energy[row], t * _logsumexp(f / t), rtol=1e-12)


def test_entropy_stays_finite_where_a_probability_underflows() -> None:
    """Logits 800 apart: p underflows to 0 for all but one class, where p log p computed naively is 0 * -inf."""
    logits = torch.tensor([[800.0, 0.0, 0.0], [1.0, 2.0, 3.0]], dtype=torch.float64)
    model = nn.Sequential(nn.Flatten()).eval()  # the "images" are the logits: [B, 3, 1, 1] -> [B, 3]
    scores = score_batch(model, logits.view(2, 3, 1, 1), {"entropy": [()]})["entropy"][0]
    assert torch.isfinite(scores).all() and scores[0] == 0.0
    p = np.exp([1.0, 2.0, 3.0]) / np.exp([1.0, 2.0, 3.0]).sum()
    assert scores[1].item() == pytest.approx(float((p * np.log(p)).sum()), rel=1e-12)


def test_odin_method_equals_the_odin_scoring_function() -> None:
    x, model = _images(), _model()
    settings = [(1.0, 0.0), (10.0, 0.002), (1000.0, 0.0), (1000.0, 0.004)]
    assert torch.equal(_scores("odin", x, settings), score_settings(model, x, settings, STD))
    assert torch.equal(_scores("msp", x, [()])[0], max_softmax(model(x).detach(), 1.0))


# --- pytorch-ood 0.4.0: higher = more OOD there, so ours = -theirs ---------------------------------------------

@pytest.mark.parametrize(("name", "settings", "theirs"), [
    ("msp", [()], lambda model, s: MaxSoftmax(model)),
    ("maxlogit", [()], lambda model, s: MaxLogit(model)),
    ("energy", [(1.0,)], lambda model, s: EnergyBased(model, t=s[0])),
    ("energy", [(50.0,)], lambda model, s: EnergyBased(model, t=s[0])),
    ("entropy", [()], lambda model, s: Entropy(model)),  # no p below their 1e-7 clip on these inputs
    ("odin", [(1000.0, 0.0014)], lambda model, s: TheirODIN(model, eps=s[1], temperature=s[0], norm_std=list(STD))),
])
def test_scores_are_the_negated_scores_of_pytorch_ood(name, settings, theirs) -> None:
    x, model = _images(scale=0.5), _model()
    ours = _scores(name, x, settings, model)[0]
    if name == "entropy":
        assert float(torch.softmax(model(x), dim=1).min()) > 1e-7
    if name == "odin":  # torch.sign gives 0 where ODIN's step is +1: compare only without zero gradients
        x_leaf = x.clone().requires_grad_(True)
        logits = model(x_leaf)
        loss = nn.functional.cross_entropy(logits / 1000.0, logits.argmax(1), reduction="sum")
        assert bool((torch.autograd.grad(loss, x_leaf)[0] != 0).all())
    detector = theirs(model, settings[0])
    torch.testing.assert_close(ours, -detector.predict(x).detach(), rtol=0, atol=1e-10)


# --- the registry ----------------------------------------------------------------------------------------------

def test_registry_lists_creates_and_refuses_by_name() -> None:
    assert list_methods()[:5] == ["msp", "odin", "energy", "maxlogit", "entropy"]
    assert create_method("energy").name == "energy" and create_method("energy") is not create_method("energy")
    with pytest.raises(ValueError, match="unknown method 'nope'; the registered methods are msp, odin"):
        create_method("nope")
    with pytest.raises(ValueError, match="already registered"):
        @register_method
        class Clash(Method):  # noqa: F841
            name = "msp"

            def score(self, batch, settings):
                raise NotImplementedError


def test_tie_orders_and_defaults_follow_design() -> None:
    odin, energy = create_method("odin"), create_method("energy")
    assert odin.default_setting() == (1000.0, 0.0)  # larger T, then smaller epsilon
    assert energy.default_setting() == (1.0,)  # smaller T: the paper's T = 1
    assert create_method("msp").default_setting() == ()


@pytest.fixture
def margin_method() -> Iterator[str]:
    """A method added as a user would (one class, one decorator): the margin between the two largest logits."""
    @register_method
    class Margin(Method):
        name = "margin_for_test"

        def score(self, batch: Batch, settings):
            top2 = batch.logits.topk(2, dim=1).values
            return (top2[:, 0] - top2[:, 1]).expand(len(settings), -1).clone()

        def score_range(self, num_classes: int) -> tuple[float, float]:
            return 0.0, math.inf

    yield Margin.name
    del method_registry._METHODS[Margin.name]


def test_a_method_in_one_class_runs_through_the_protocol_and_a_saved_detector(margin_method, tmp_path) -> None:
    assert margin_method in list_methods()
    _check_protocol_and_detector_round_trip(margin_method, tmp_path)


# --- the contract of every registered method --------------------------------------------------------------------

def _contract_methods() -> list[str]:
    return list_methods()


def _fitted_scores(name: str, model: nn.Module, x: torch.Tensor, settings: list, train: tuple, fits: Fits | None = None,
                   input_std=STD) -> torch.Tensor:
    """The method's scores of x; a fitted method's fit is made on the training images ``train`` (or ``fits``)."""
    if fits is None and create_method(name).needs_fit:
        fits = make_fits(model, *train, {name: settings})
    return score_batch(model, x, {name: settings}, input_std, fits=fits, seed=0, start=0)[name]


def _fitted_settings(method: Method, settings: list, fits: Fits | None) -> list:
    """The settings the method's fit can score (as prepare_fits keeps them)."""
    return method.settings_for_fit(settings, fits.of(method.name))[0] if fits is not None else settings


@pytest.mark.parametrize("name", _contract_methods())
def test_contract_shapes_direction_range_inference_mode_and_precision(name: str) -> None:
    method, setup = create_method(name), case(name)
    settings = method.grid()[:3]
    x, model, train = setup.batch(torch.float64), setup.net(torch.float64), setup.train()
    fits = make_fits(model, *train, {name: settings}) if method.needs_fit else None
    settings = _fitted_settings(method, settings, fits)
    scores = _fitted_scores(name, model, x, settings, train, fits)
    assert scores.shape == (len(settings), len(x)) and scores.dtype == torch.float64
    # Range, up to a few units in the last place.
    low, high = method.score_range(N_CLASSES)
    slack = 8 * torch.finfo(torch.float64).eps * max([1.0, *(abs(v) for v in (low, high) if math.isfinite(v))])
    assert bool(((scores >= low - slack) & (scores <= high + slack)).all()), (name, scores.min(), scores.max())
    # Higher = in-distribution: confident logits (in) against flat ones (out) on the identity "model", whose
    # training features (for the fitted methods) lie near the confident ones.
    # Some methods check it on their own net: images near its training prototypes against far ones, on average.
    if setup.on_prototypes:
        s_in, s_out = (_fitted_scores(name, model, z, settings, train, fits) for z in near_and_far())
    else:
        identity = setup.identity()
        confident = torch.zeros(4, N_CLASSES, 1, 1, dtype=torch.float64)
        confident[torch.arange(4), torch.arange(4) % N_CLASSES] = 8.0
        flat = torch.full((4, N_CLASSES, 1, 1), 0.5, dtype=torch.float64)
        identity_train = setup.identity_train()
        identity_fits = make_fits(identity, *identity_train, {name: settings}) if method.needs_fit else None
        identity_settings = _fitted_settings(method, settings, identity_fits)
        s_in, s_out = (_fitted_scores(name, identity, z, identity_settings, identity_train, identity_fits,
                                      input_std=None) for z in (confident, flat))
    assert bool((s_in.mean(dim=1) > s_out.mean(dim=1)).all() if setup.on_prototypes else (s_in > s_out).all()), name
    # Under inference mode (Lightning's validate and test loops), the same scores.
    with torch.inference_mode():
        assert torch.equal(_fitted_scores(name, model, x, settings, train, fits), scores)
    # float32 against float64 (the same fit): rtol 1e-4 plus 1e-6 of the range's width (1e-4 for unbounded scores).
    width = high - low
    atol = 1e-6 * width if math.isfinite(width) else 1e-4
    single = _fitted_scores(name, setup.net(torch.float32), setup.batch(torch.float32), settings, train, fits)
    torch.testing.assert_close(single.double(), scores, rtol=1e-4, atol=atol)


@pytest.mark.parametrize("name", _contract_methods())
def test_contract_protocol_and_saved_detector_round_trip(name: str, tmp_path) -> None:
    _check_protocol_and_detector_round_trip(name, tmp_path)


def _check_protocol_and_detector_round_trip(name: str, tmp_path) -> None:
    """The protocol tunes the method on a small grid; a detector at its choice, saved and loaded, gives the same
    scores and flags exactly the reported FPR at 95% TPR of the OOD test images."""
    setup = case(name)
    model, g = setup.net(torch.float64), torch.Generator().manual_seed(2)
    in_images = torch.randn(40, 3, 4, 4, generator=g, dtype=torch.float64)
    in_labels = torch.zeros(40, dtype=torch.long)
    if name not in ORIGINAL:  # images near the prototypes the fits were made on, labelled
        in_images, in_labels = proto_images(7, 15)
        in_images, in_labels = in_images[:40], in_labels[:40]
    in_set = TensorDataset(in_images, in_labels)
    ood = {"ood": TensorDataset(3 * torch.randn(30, 3, 4, 4, generator=g, dtype=torch.float64), -torch.ones(30))}
    method = create_method(name)
    grid = MethodGrid(method, tuple(method.grid()[:4]))
    fits, saved = None, None
    if method.needs_fit:
        fits = make_fits(model, *setup.train(), {name: grid.settings})
        kept = tuple(_fitted_settings(method, list(grid.settings), fits))
        grid = MethodGrid(method, kept, grid.fixed if grid.fixed in kept else min(kept, key=method.tie_key))
        saved = save_fit(tmp_path / "fits" / f"{name}.pt", name, grid.settings, {}, fits.of(name))
    result = run_protocol(ProtocolPlan((grid,)), in_set, ood, ModelScorer(model, STD, batch_size=16, fits=fits))
    # Stochastic passes: a detector would need the run seed and the batch starts (deploy/ does not pass them yet).
    if method.needs(grid.settings, fits.of(name) if fits else None).passes:
        assert set(result.test_scores["ood"]) == {name}
        return
    (record,) = [r for r in result.records if r.method == name]
    setting = result.selections[name]["ood"].setting if grid.tuned else grid.settings[0]
    s_in, s_out = result.test_scores["ood"][name]
    detector = Detector.from_scores(model, name, setting, _spec(), s_in, fit=saved)
    loaded = Detector.load(detector.save(tmp_path / "detectors" / f"{name}.json"), model)
    assert loaded.method.name == name and loaded.setting == setting and loaded.threshold == detector.threshold
    ood_images = torch.stack([ood["ood"][i][0] for i in range(30)])[result.splits["ood"].test]
    torch.testing.assert_close(loaded.score(ood_images), s_out, rtol=0, atol=1e-12)
    assert loaded.predict(ood_images)[0].logical_not().double().mean().item() == record.metrics["fpr_at_95_tpr"]


def _spec() -> ImageSpec:
    return ImageSpec(size=4, channels=3, mean=(0.0, 0.0, 0.0), std=STD, class_names=tuple(map(str, range(N_CLASSES))))
