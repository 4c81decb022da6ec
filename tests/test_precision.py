"""odin_pl.training.precision: ``trainer.precision: auto`` from the CPU's flags and a measured step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from odin_pl.errors import UserError
from odin_pl.training import precision
from odin_pl.training.precision import CPUInfo, choose_cpu_precision, choose_precision, cpu_info, step_seconds

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13 64-Core Processor
flags\t\t: fpu sse2 avx avx2 fma

processor\t: 1
model name\t: another name
flags\t\t: fpu avx512_bf16
"""


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))


def test_cpu_info_reads_the_first_processors_name_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    cpu = cpu_info(path)
    assert cpu.model == "AMD EPYC 7B13 64-Core Processor" and cpu.flags == {"fpu", "sse2", "avx", "avx2", "fma"}
    assert cpu.native_bf16 == [] and cpu.vector_units == "avx2"
    assert cpu_info(tmp_path / "missing") == CPUInfo("unknown CPU", frozenset())


def test_without_native_bf16_float32_is_chosen_without_measuring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "step_seconds", lambda *a, **k: pytest.fail("measured on a CPU without bf16"))
    x, y = torch.rand(2, 3, 8, 8), torch.tensor([0, 1])
    choice = choose_cpu_precision(_net(), x, y, CPUInfo("AMD EPYC", frozenset({"avx2"})))
    assert choice.precision == "32-true"
    assert choice.line() == ("precision: auto -> 32-true (AMD EPYC has no native bfloat16 (avx2): emulated bfloat16 "
                             "is several times slower)")


@pytest.mark.parametrize(("fp32", "bf16", "expected"), [(2.0, 1.0, "bf16-mixed"), (1.0, 2.0, "32-true"),
                                                        (1.0, 1.0, "32-true")])
def test_with_native_bf16_the_measured_faster_precision_is_chosen(monkeypatch: pytest.MonkeyPatch, fp32: float,
                                                                 bf16: float, expected: str) -> None:
    times = {"32-true": fp32, "bf16-mixed": bf16}
    monkeypatch.setattr(precision, "step_seconds", lambda model, x, y, chosen: times[chosen])
    x, y = torch.rand(2, 3, 8, 8), torch.tensor([0, 1])
    choice = choose_cpu_precision(_net(), x, y, CPUInfo("Xeon", frozenset({"avx512f", "amx_bf16", "avx512_bf16"})))
    assert choice.precision == expected
    assert "Xeon has amx_bf16 avx512_bf16" in choice.reason and f"float32 {fp32 * 1e3:.1f} ms" in choice.reason


@pytest.mark.parametrize("chosen", ["32-true", "bf16-mixed"])
def test_a_measured_step_leaves_the_model_as_it_was(chosen: str) -> None:
    """Timing runs a copy in training mode: the model's weights, BatchNorm statistics, mode and gradients are kept."""
    net = _net().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    seconds = step_seconds(net, torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]), chosen, repeats=1)
    assert 0 < seconds < 60
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not net.training and all(p.grad is None for p in net.parameters())
    with pytest.raises(ValueError, match="measures 32-true or bf16-mixed"):
        step_seconds(net, torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]), "16-mixed")


def test_several_cpu_processes_are_refused_and_other_accelerators_keep_float32() -> None:
    with pytest.raises(UserError, match="measures the CPU in one process, not 2: set --trainer.precision"):
        choose_precision("cpu", 2, _net(), (3, 8, 8), 4)
    assert choose_precision("mps", 1, _net(), (3, 8, 8), 4).precision == "32-true"
