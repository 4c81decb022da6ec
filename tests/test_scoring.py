"""odin_pl.odin_score / msp_score against an independent float64 re-implementation of ODIN (DESIGN.md, "ODIN scoring").

Tolerances: the float32 model is compared with the float64 reference at atol 2e-6 on the scores (float32
rounding of logits and of x - eps * s / std; observed errors are ~1e-7; a gradient entry whose float32 sign differs
from float64 has |g| ~ 0, so flipping it moves the score by ~eps * |g|), and the perturbation's effect
S(x_tilde) - S(x) at rtol 2e-2 + atol 1e-7 (at T = 1000 every score is ~1/C and the effect is ~4e-6); the float64
model is compared at atol 1e-12, and its perturbation steps exactly.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

from odin_pl import msp_score, odin_score
from odin_pl.methods.batch import Batch, Needs
from odin_pl.methods.odin import perturbed_scores, score_settings, temperature_loss

STD = (0.2, 0.5, 1.3)
SETTINGS = [(1.0, 0.0), (1000.0, 0.0014), (10.0, 0.004), (2.0, 0.0), (1.0, 0.002), (1000.0, 0.0)]
ATOL32 = 2e-6  # float32 model vs float64 reference, on scores in (0, 1)
EFFECT_ATOL, EFFECT_RTOL = 1e-7, 2e-2  # on S(x_tilde) - S(x), float32 vs float64
ATOL64 = 1e-12  # float64 model vs float64 reference


def make_cnn(num_classes: int = 5, in_channels: int = 3) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 4 * 4, num_classes),
    )
    with torch.no_grad():  # non-trivial batch-norm statistics and affine parameters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        model[-1].weight.mul_(10.0)  # spread the logits so max-softmax is far from 1/C and from 1
    return model.eval()


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return make_cnn()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(6, 3, 8, 8)


# ----------------------------------------------------------------------------------------------------------
# Independent reference (float64)
# ----------------------------------------------------------------------------------------------------------

def reference_step(model64: nn.Module, x64: torch.Tensor, temperature: float, std) -> torch.Tensor:
    """sign+(d/dx sum_b -log softmax(f(x_b) / T)[y_hat_b]) / std, with sign+(0) = +1."""
    with torch.inference_mode(False), torch.enable_grad():
        xr = x64.detach().clone().requires_grad_(True)
        logits = model64(xr)
        y_hat = logits.detach().argmax(dim=1)
        z = logits / temperature
        log_p = z - torch.logsumexp(z, dim=1, keepdim=True)
        loss = -log_p[torch.arange(len(y_hat)), y_hat].sum()
        (g,) = torch.autograd.grad(loss, xr)
    s = torch.ones_like(g)
    s[g < 0] = -1.0
    if std is not None:
        s = s / torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
    return s


def reference_odin(model: nn.Module, x: torch.Tensor, temperature: float, epsilon: float, std=STD) -> torch.Tensor:
    model64 = copy.deepcopy(model).double().eval()
    x64 = x.detach().double()
    if epsilon > 0:
        x64 = x64 - epsilon * reference_step(model64, x64, temperature, std)
    with torch.no_grad():
        z = model64(x64) / temperature
        e = torch.exp(z - z.max(dim=1, keepdim=True).values)
        return (e / e.sum(dim=1, keepdim=True)).max(dim=1).values


# ----------------------------------------------------------------------------------------------------------
# Agreement with the reference
# ----------------------------------------------------------------------------------------------------------

def test_reference_is_sensitive_to_the_perturbation(model, x):
    """Guard against a vacuous comparison: the perturbation, the std division and T move the reference scores
    by far more than the tolerances used below."""
    for t, e in SETTINGS:
        if e > 0:
            effect = (reference_odin(model, x, t, e) - reference_odin(model, x, t, 0.0)).abs().min()
            assert effect > 20 * (EFFECT_ATOL + EFFECT_RTOL * effect), (t, e, effect)
            if t <= 10:
                assert effect > 100 * ATOL32
    no_std = reference_odin(model, x, 10.0, 0.004, std=None)
    assert (no_std - reference_odin(model, x, 10.0, 0.004)).abs().max() > 100 * ATOL32
    assert (reference_odin(model, x, 1.0, 0.0) - reference_odin(model, x, 2.0, 0.0)).abs().min() > 100 * ATOL32


@pytest.mark.parametrize("temperature, epsilon", SETTINGS)
def test_odin_float32_matches_float64_reference(model, x, temperature, epsilon):
    got = odin_score(model, x, temperature=temperature, epsilon=epsilon, input_std=STD)
    assert got.shape == (6,) and got.dtype == torch.float32
    want = reference_odin(model, x, temperature, epsilon)
    torch.testing.assert_close(got.double(), want, atol=ATOL32, rtol=0)
    if epsilon > 0:  # at T = 1000 all scores are ~1/C: compare the perturbation's effect, relative to its size
        got_effect = got.double() - odin_score(model, x, temperature=temperature, epsilon=0.0).double()
        want_effect = want - reference_odin(model, x, temperature, 0.0)
        torch.testing.assert_close(got_effect, want_effect, atol=EFFECT_ATOL, rtol=EFFECT_RTOL)


@pytest.mark.parametrize("temperature, epsilon", SETTINGS)
def test_odin_float64_matches_reference_exactly(model, x, temperature, epsilon):
    model64, x64 = copy.deepcopy(model).double(), x.double()
    got = odin_score(model64, x64, temperature=temperature, epsilon=epsilon, input_std=STD)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, reference_odin(model, x, temperature, epsilon), atol=ATOL64, rtol=0)


@pytest.mark.parametrize("std", [STD, None, torch.tensor(STD, dtype=torch.float64)])
def test_odin_steps_equal_reference_signs_in_float64(model, x, std):
    model64, x64 = copy.deepcopy(model).double(), x.double()
    temperatures = [1.0, 10.0, 1000.0]
    batch = Batch(model64, x64, std, needs=Needs(logits=True, losses=tuple(map(temperature_loss, temperatures))))
    logits, steps = batch.logits, [batch.step(temperature_loss(t)) for t in temperatures]
    with torch.no_grad():
        torch.testing.assert_close(logits, model64(x64), atol=0, rtol=0)
    ref_std = None if std is None else STD
    for t, step in zip(temperatures, steps):
        assert torch.equal(step, reference_step(model64, x64, t, ref_std)), f"step differs at T={t}"
    # std divides channel-wise: the step magnitudes per channel are 1 / std[c]
    if std is not None:
        for c, s in enumerate(STD):
            assert torch.equal(steps[0][:, c].abs(), torch.full_like(steps[0][:, c], 1.0 / s))


def test_perturbed_scores_several_epsilons_and_chunks(model, x):
    model64, x64 = copy.deepcopy(model).double(), x.double()
    step = Batch(model64, x64, STD, needs=Needs(losses=(temperature_loss(10.0),))).step(temperature_loss(10.0))
    eps = [0.0, 0.001, 0.002, 0.004]
    for fbs in (None, 6, 12, 18, 100):
        out = perturbed_scores(model64, x64, step, 10.0, eps, forward_batch_size=fbs)
        assert out.shape == (4, 6)
        for row, e in zip(out, eps):
            torch.testing.assert_close(row, reference_odin(model, x, 10.0, e), atol=ATOL64, rtol=0)


@pytest.mark.parametrize("mode", ["plain", "inference_mode"])
def test_score_settings_matches_reference_per_setting(model, x, mode):
    """The shared-work path (one forward, one gradient per T) gives every setting's own ODIN score."""
    settings = [(1000.0, 0.0014), (1.0, 0.0), (10.0, 0.004), (1000.0, 0.0), (10.0, 0.0), (10.0, 0.001),
                (2.0, 0.0), (1000.0, 0.004)]
    model64, x64 = copy.deepcopy(model).double(), x.double()
    ctx = torch.inference_mode if mode == "inference_mode" else torch.enable_grad
    with ctx():
        got64 = score_settings(model64, x64, settings, STD, forward_batch_size=12)
        got32 = score_settings(model, x, settings, STD)
    assert got64.shape == (len(settings), 6)
    for row64, row32, (t, e) in zip(got64, got32, settings):
        want = reference_odin(model, x, t, e)
        torch.testing.assert_close(row64, want, atol=ATOL64, rtol=0)
        torch.testing.assert_close(row32.double(), want, atol=ATOL32, rtol=0)
        torch.testing.assert_close(row32, odin_score(model, x, t, e, STD), atol=0, rtol=0)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("mode", ["inference_mode", "no_grad"])
@pytest.mark.parametrize("temperature, epsilon", [(1000.0, 0.0014), (10.0, 0.004), (2.0, 0.0)])
def test_odin_under_inference_mode_and_no_grad(model, x, mode, temperature, epsilon):
    ctx = torch.inference_mode if mode == "inference_mode" else torch.no_grad
    model64, x64 = copy.deepcopy(model).double(), x.double()
    with ctx():
        x_in_ctx = x.clone()  # an inference tensor under inference_mode, as in Lightning's test loop
        got32 = odin_score(model, x_in_ctx, temperature=temperature, epsilon=epsilon, input_std=STD)
        got64 = odin_score(model64, x64.clone(), temperature=temperature, epsilon=epsilon, input_std=STD)
    want = reference_odin(model, x, temperature, epsilon)
    torch.testing.assert_close(got32.double(), want, atol=ATOL32, rtol=0)
    torch.testing.assert_close(got64, want, atol=ATOL64, rtol=0)
    # and identical to the call outside any context
    torch.testing.assert_close(got32, odin_score(model, x, temperature, epsilon, STD), atol=0, rtol=0)


# ----------------------------------------------------------------------------------------------------------
# sign+ of a zero gradient
# ----------------------------------------------------------------------------------------------------------

class IgnoresLastChannel(nn.Module):
    """Uses channels 0 and 1 only (channel 2 has an exactly zero input gradient); records every input."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 8 * 8, 4))
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.net(x[:, :2])


def test_zero_gradient_steps_by_plus_one(x):
    model = IgnoresLastChannel().double().eval()
    x64 = x.double()
    eps = 0.003
    odin_score(model, x64, temperature=10.0, epsilon=eps, input_std=STD)
    assert len(model.seen) == 2  # one forward for the gradient, one on x_tilde
    x_tilde = model.seen[-1]
    # channel 2: zero gradient -> sign+ = +1 -> x_tilde = x - eps / std[2] everywhere (torch.sign would give 0)
    torch.testing.assert_close(x_tilde[:, 2], x64[:, 2] - eps / STD[2], atol=1e-15, rtol=0)
    # channels 0 and 1 follow the reference sign of a nonzero gradient
    step = reference_step(model, x64, 10.0, STD)
    torch.testing.assert_close(x_tilde, x64 - eps * step, atol=1e-15, rtol=0)
    assert (step[:, :2] < 0).any() and (step[:, :2] > 0).any()


def test_zero_gradient_everywhere_without_std():
    """A model whose logits do not depend on the input at all: every entry moves by -eps (sign+ of 0 = +1)."""

    class Constant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bias = nn.Parameter(torch.tensor([0.5, -1.0, 2.0]))
            self.seen: list[torch.Tensor] = []

        def forward(self, x):
            self.seen.append(x.detach().clone())
            return self.bias.expand(x.shape[0], -1) + 0.0 * x.sum(dim=(1, 2, 3)).unsqueeze(1)

    model = Constant().eval()
    x = torch.randn(2, 3, 4, 4)
    odin_score(model, x, temperature=1.0, epsilon=0.01)
    assert torch.equal(model.seen[-1], x - 0.01)


# ----------------------------------------------------------------------------------------------------------
# MSP
# ----------------------------------------------------------------------------------------------------------

def test_msp_equals_odin_t1_eps0_and_softmax_by_hand(model, x):
    got = msp_score(model, x)
    assert torch.equal(got, odin_score(model, x, temperature=1.0, epsilon=0.0))
    with torch.no_grad():
        logits = model(x).double()
    e = torch.exp(logits)
    by_hand = (e / e.sum(dim=1, keepdim=True)).max(dim=1).values
    torch.testing.assert_close(got.double(), by_hand, atol=ATOL32, rtol=0)
    model64 = copy.deepcopy(model).double()
    with torch.no_grad():
        e64 = torch.exp(model64(x.double()))
    by_hand64 = (e64 / e64.sum(dim=1, keepdim=True)).max(dim=1).values
    torch.testing.assert_close(msp_score(model64, x.double()), by_hand64, atol=ATOL64, rtol=0)
    # not trivially 1 or 1/C
    assert 0.25 < got.min() and got.max() < 0.999


# ----------------------------------------------------------------------------------------------------------
# No side effects
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["plain", "inference_mode", "no_grad"])
def test_no_side_effects(mode):
    model = make_cnn()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    x = torch.randn(6, 3, 8, 8)
    x_before = x.clone()
    ctx = {"plain": torch.enable_grad, "inference_mode": torch.inference_mode, "no_grad": torch.no_grad}[mode]
    with ctx():
        for t, e in [(1000.0, 0.0014), (1.0, 0.0), (10.0, 0.004)]:
            odin_score(model, x, temperature=t, epsilon=e, input_std=STD)
        msp_score(model, x)
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert not model.training and not any(m.training for m in model.modules())
    assert torch.equal(x, x_before) and x.grad is None and not x.requires_grad
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # BN stats untouched


def test_input_that_requires_grad(model, x):
    """An input that is itself part of a graph is scored like a plain one and collects no .grad."""
    x_req = x.clone().requires_grad_(True)
    got = odin_score(model, x_req, temperature=10.0, epsilon=0.004, input_std=STD)
    torch.testing.assert_close(got, odin_score(model, x, 10.0, 0.004, STD), atol=0, rtol=0)
    assert x_req.grad is None and all(p.grad is None for p in model.parameters())


# ----------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_temperature(model, x, temperature):
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        odin_score(model, x, temperature=temperature, epsilon=0.001)


@pytest.mark.parametrize("epsilon", [-0.001, float("nan"), float("inf")])
def test_bad_epsilon(model, x, epsilon):
    with pytest.raises(ValueError, match="epsilon must be a finite number >= 0"):
        odin_score(model, x, temperature=10.0, epsilon=epsilon)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("epsilon", [0.0, 0.001])
def test_non_finite_input(model, x, bad, epsilon):
    x = x.clone()
    x[2, 1, 3, 4] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        odin_score(model, x, temperature=10.0, epsilon=epsilon)


def test_three_d_input(model, x):
    with pytest.raises(ValueError, match=re.escape("[B, C, H, W], got shape (3, 8, 8)")):
        odin_score(model, x[0], temperature=10.0, epsilon=0.001)


@pytest.mark.parametrize("epsilon", [0.0, 0.001])
@pytest.mark.parametrize("std", [(0.2, 0.5), (0.2, 0.5, 1.3, 1.0), [0.3]])
def test_input_std_wrong_channel_count(model, x, epsilon, std):
    with pytest.raises(ValueError, match=f"input_std has {len(std)} values but the images have 3 channels"):
        odin_score(model, x, temperature=10.0, epsilon=epsilon, input_std=std)


def test_input_std_non_positive(model, x):
    with pytest.raises(ValueError, match="input_std must be positive"):
        odin_score(model, x, temperature=10.0, epsilon=0.001, input_std=(0.2, 0.0, 1.3))


@pytest.mark.parametrize("epsilon", [0.0, 0.001])
def test_model_in_training_mode(epsilon):
    model = make_cnn().train()
    x = torch.randn(6, 3, 8, 8)
    with pytest.raises(ValueError, match="training mode"):
        odin_score(model, x, temperature=10.0, epsilon=epsilon)
    with pytest.raises(ValueError, match="training mode"):
        msp_score(model, x)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("epsilon", [0.0, 0.001])
@pytest.mark.parametrize("mode", ["plain", "inference_mode"])
def test_wrong_channel_count_for_model(model, epsilon, mode):
    x1 = torch.randn(6, 1, 8, 8)
    ctx = torch.inference_mode if mode == "inference_mode" else torch.enable_grad
    with ctx(), pytest.raises(ValueError, match=re.escape("(6, 1, 8, 8)")):
        odin_score(model, x1, temperature=10.0, epsilon=epsilon)


@pytest.mark.parametrize("epsilon", [0.0, 0.001])
def test_float64_images_to_a_float32_model_name_the_dtypes(model, x, epsilon):
    with pytest.raises(ValueError, match=r"images are torch.float64 but the model's weights are torch.float32"):
        odin_score(model, x.double(), temperature=10.0, epsilon=epsilon)


def test_a_setting_that_overflows_the_network_is_named_not_the_weights(model, x):
    """Before issue 29 a huge epsilon that overflows the scores (float32: x - 1e38 * step) was blamed on the
    weights. With finite scores at the method's other settings, the error names the overflowing setting; with
    non-finite scores at every setting, it still suspects the weights."""
    from torch.utils.data import TensorDataset

    from odin_pl.errors import NonFiniteScoresError
    from odin_pl.protocol.run import score_plan

    data = TensorDataset(x, torch.zeros(len(x)))
    with pytest.raises(NonFiniteScoresError, match=r"only at some settings \(odin at \(1.0, 1e\+38\)\) while the "
                                                   r"others are finite: these values overflow"):
        score_plan(model, data, {"odin": [(1.0, 0.0), (1.0, 1e38)]}, batch_size=3)
    broken = copy.deepcopy(model)
    with torch.no_grad():
        next(broken.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteScoresError, match="its weights may be corrupt"):
        score_plan(broken, data, {"odin": [(1.0, 0.0), (1.0, 0.001)]}, batch_size=3)
