"""odin: temperature scaling and input perturbation (Liang, Li, Srikant, ICLR 2018, section 3).

For logits f(x) of a batch x that is already normalized with per-channel (mean, std):

    y_hat   = argmax_i f_i(x)
    loss_T  = sum_b CE(f(x_b) / T, y_hat_b)                    (= -sum_b log S_y_hat(x_b; T))
    s_T     = +1 where d loss_T / dx >= 0 else -1, divided channel-wise by std when it is known
    x_tilde = x - epsilon * s_T
    score   = S(x_tilde; T) = max_i softmax(f(x_tilde) / T)_i   (higher = more in-distribution)

loss_T is a declared loss of the batch (``odin_pl.methods.batch``): one gradient per T serves all its epsilons, and
epsilon = 0 needs no gradient (the clean logits serve every T). T = 1, epsilon = 0 is the MSP baseline of Hendrycks
& Gimpel (2017). Ties between settings: larger T, then smaller epsilon. :func:`odin_score` and :func:`msp_score`
are the public functions (``odin_pl.odin_score``); they work under ``torch.inference_mode()`` and
``torch.no_grad()`` and never write ``.grad`` on parameters.
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from odin_pl.methods.base import Method, Param, Setting
from odin_pl.methods.registry import register_method
from odin_pl.methods.batch import Batch, Loss, Needs, Outputs, StdLike, model_forward, perturbed_rows
from odin_pl.methods.features import Fit
from odin_pl.methods.msp import max_softmax
from odin_pl.errors import UserError

# The paper's grid (section 4.4).
PAPER_TEMPERATURES = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
PAPER_EPSILONS = tuple(0.004 * i / 20 for i in range(21))  # 21 evenly spaced values, 0 .. 0.004


def check_temperature(temperature: float) -> None:
    if not (float(temperature) > 0 and torch.isfinite(torch.tensor(float(temperature)))):
        raise UserError(f"temperature must be a finite number > 0, got {temperature!r} "
                        "(the paper's grid is 1, 2, 5, ..., 1000; T = 1 is no scaling)")


def check_epsilon(epsilon: float) -> None:
    if not (float(epsilon) >= 0 and torch.isfinite(torch.tensor(float(epsilon)))):
        raise UserError(f"epsilon must be a finite number >= 0, got {epsilon!r} "
                        "(the perturbation size in [0, 1] pixel units; 0 turns perturbation off)")


def temperature_loss(temperature: float) -> Loss:
    """loss_T = sum_b CE(f(x_b) / T, y_hat_b) with y_hat = argmax f(x): the loss whose input gradient ODIN steps
    against at temperature T."""
    temperature = float(temperature)

    def loss(outputs: Outputs) -> Tensor:
        return F.cross_entropy(outputs.logits / temperature, outputs.logits.argmax(dim=1), reduction="sum")

    return Loss(("odin", temperature), loss)


def perturbed_scores(
    model: nn.Module, x: Tensor, step: Tensor, temperature: float, epsilons: Sequence[float],
    forward_batch_size: int | None = None,
) -> Tensor:
    """S(x - epsilon * step; T) for every epsilon, as a tensor [len(epsilons), B] (see
    :func:`~odin_pl.methods.batch.perturbed_rows`)."""
    return perturbed_rows(lambda z: max_softmax(model_forward(model, z), temperature), x, step, epsilons,
                          forward_batch_size)


def gradient_temperatures(settings: Sequence[Setting]) -> list[float]:
    """The distinct temperatures of the settings that perturb the input (epsilon > 0)."""
    return list(dict.fromkeys(float(t) for t, e in settings if e > 0))


@register_method
class ODIN(Method):
    name = "odin"
    roles = frozenset({"paper"})
    openood_grid = {"temperature": (1.0, 10.0, 100.0, 1000.0), "epsilon": (0.0014, 0.0028)}
    params = (Param("temperature", "T", PAPER_TEMPERATURES), Param("epsilon", "epsilon", PAPER_EPSILONS, floor=0.0))

    def needs(self, settings: Sequence[Setting], fit: Fit | None = None) -> Needs:
        return Needs(logits=True, losses=tuple(temperature_loss(t) for t in gradient_temperatures(settings)))

    def score(self, batch: Batch, settings: Sequence[Setting]) -> Tensor:
        """epsilon = 0 from the clean logits, every other setting from the input perturbed along its temperature's
        step (one gradient per T serves all its epsilons)."""
        out = batch.x.new_empty(len(settings), batch.x.shape[0])
        for row, (temperature, epsilon) in enumerate(settings):
            if epsilon == 0:
                out[row] = max_softmax(batch.logits, temperature)
        for temperature in gradient_temperatures(settings):
            rows = [i for i, (t, e) in enumerate(settings) if float(t) == temperature and e > 0]
            out[rows] = batch.perturbed(temperature_loss(temperature), [settings[i][1] for i in rows],
                                        partial(max_softmax, temperature=temperature))
        return out

    def score_range(self, num_classes: int) -> tuple[float, float]:
        return 1.0 / num_classes, 1.0

    def tie_key(self, setting: Setting) -> tuple:
        temperature, epsilon = setting
        return -temperature, epsilon

    def check_setting(self, setting: Sequence[float]) -> Setting:
        setting = super().check_setting(setting)
        check_temperature(setting[0])
        check_epsilon(setting[1])
        return setting


def score_settings(
    model: nn.Module, x: Tensor, settings: Sequence[tuple[float, float]], input_std: StdLike = None,
    forward_batch_size: int | None = None,
) -> Tensor:
    """ODIN's scores of the batch x for several (T, epsilon) settings at once, as a tensor [len(settings), B].

    Work is shared: one forward pass gives the clean logits (all settings with epsilon = 0) and the graph
    for one input gradient per distinct T with some epsilon > 0; each such gradient serves all its epsilons.
    """
    method = ODIN()
    settings = [method.check_setting(s) for s in settings]
    return method.score(Batch(model, x, input_std, forward_batch_size, needs=method.needs(settings)), settings)


def odin_score(
    model: nn.Module, x: Tensor, temperature: float = 1000.0, epsilon: float = 0.0014,
    input_std: StdLike = None,
) -> Tensor:
    """ODIN score S(x_tilde; T) of each image in the normalized batch x (shape [B]); higher = in-distribution.

    ``input_std``: the per-channel std used to normalize x, so that epsilon is a step in [0, 1] pixel units.
    """
    return score_settings(model, x, [(temperature, epsilon)], input_std)[0]


def msp_score(model: nn.Module, x: Tensor) -> Tensor:
    """Maximum softmax probability (Hendrycks & Gimpel, 2017): ODIN with T = 1 and epsilon = 0."""
    return odin_score(model, x, temperature=1.0, epsilon=0.0)
