"""odin: temperature scaling and input perturbation (Liang, Li, Srikant, ICLR 2018); see ``odin_pl.methods.batch``.

score = max_i softmax(f(x - epsilon * s_T) / T)_i with s_T = sign+(d CE(f(x) / T, y_hat) / dx) / std.
Ties between settings: larger T, then smaller epsilon.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from odin_pl.methods.base import Method, Param, Setting
from odin_pl.methods.registry import register_method
from odin_pl.methods.batch import Batch, check_epsilon, check_temperature, odin_gradient_temperatures, odin_rows

# The paper's grid (section 4.4).
PAPER_TEMPERATURES = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
PAPER_EPSILONS = tuple(0.004 * i / 20 for i in range(21))  # 21 evenly spaced values, 0 .. 0.004


@register_method
class ODIN(Method):
    name = "odin"
    roles = frozenset({"paper"})
    params = (Param("temperature", "T", PAPER_TEMPERATURES), Param("epsilon", "epsilon", PAPER_EPSILONS, floor=0.0))
    needs_input_gradient = True

    def score(self, batch: Batch, settings: Sequence[Setting]) -> Tensor:
        return odin_rows(batch, settings)

    def score_range(self, num_classes: int) -> tuple[float, float]:
        return 1.0 / num_classes, 1.0

    def tie_key(self, setting: Setting) -> tuple:
        temperature, epsilon = setting
        return -temperature, epsilon

    def gradient_temperatures(self, settings: Sequence[Setting]) -> list[float]:
        return odin_gradient_temperatures(settings)

    def check_setting(self, setting: Sequence[float]) -> Setting:
        setting = super().check_setting(setting)
        check_temperature(setting[0])
        check_epsilon(setting[1])
        return setting
