"""``trainer.precision: auto``: the training precision this machine runs fast.

On a CPU, bfloat16 autocast (``bf16-mixed``) is used only where the CPU computes bfloat16 natively (AMX or
AVX-512 BF16 among the flags of /proc/cpuinfo) *and* a short measurement of one training step (forward, loss,
backward) of the run's own network shows it faster than float32; elsewhere bfloat16 is emulated and several times
slower, and the run trains in float32 (``32-true``). On a CUDA GPU: ``bf16-mixed`` where the GPU supports it, else
``16-mixed``; on other accelerators ``32-true``. The weights stay float32 in every case.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from odin_pl.errors import UserError

NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of native bfloat16 arithmetic
CPUINFO = Path("/proc/cpuinfo")
MEASURE_BATCH = 64  # images per measured step: enough to time a convolution, short on any CPU


@dataclass(frozen=True)
class CPUInfo:
    """The CPU's model name and feature flags (empty where /proc/cpuinfo cannot be read)."""

    model: str
    flags: frozenset[str]

    @property
    def native_bf16(self) -> list[str]:
        """The native bfloat16 flags this CPU has (none: bfloat16 is emulated)."""
        return [flag for flag in NATIVE_BF16_FLAGS if flag in self.flags]

    @property
    def vector_units(self) -> str:
        """The vector extensions that matter for training speed, e.g. ``avx2 avx512f avx512_bf16``."""
        wanted = ("avx2", "avx512f", "avx512_vnni", *NATIVE_BF16_FLAGS, "amx_tile")
        return " ".join(flag for flag in wanted if flag in self.flags) or "none of avx2/avx512/amx"


def cpu_info(path: Path = CPUINFO) -> CPUInfo:
    """The first processor's ``model name`` and ``flags`` in ``path`` (Linux's /proc/cpuinfo)."""
    model, flags = "unknown CPU", frozenset()
    try:
        text = path.read_text()
    except OSError:
        return CPUInfo(model, flags)
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown CPU":
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = frozenset(value.split())
    return CPUInfo(model, flags)


def step_seconds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str, repeats: int = 2) -> float:
    """The fastest of ``repeats`` timed training steps (forward, cross-entropy, backward; after one untimed warm-up
    step) of a copy of ``model`` on the CPU at ``precision`` (``32-true`` or ``bf16-mixed``)."""
    if precision not in ("32-true", "bf16-mixed"):
        raise ValueError(f"step_seconds measures 32-true or bf16-mixed, got {precision!r}")
    net = copy.deepcopy(model).train()
    best = float("inf")
    for step in range(repeats + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        net.zero_grad(set_to_none=True)
        if step > 0:
            best = min(best, time.perf_counter() - start)
    return best


@dataclass(frozen=True)
class PrecisionChoice:
    """The resolved precision and the reason, for one console line."""

    precision: str
    reason: str

    def line(self) -> str:
        return f"precision: auto -> {self.precision} ({self.reason})"


def choose_cpu_precision(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                         cpu: CPUInfo | None = None) -> PrecisionChoice:
    """``bf16-mixed`` when ``cpu`` (default: this one) has native bfloat16 and a measured step of ``model`` on
    (``x``, ``y``) is faster in it than in float32, else ``32-true``."""
    cpu = cpu or cpu_info()
    native = cpu.native_bf16
    if not native:
        return PrecisionChoice("32-true", f"{cpu.model} has no native bfloat16 ({cpu.vector_units}): emulated "
                                          "bfloat16 is several times slower")
    fp32, bf16 = step_seconds(model, x, y, "32-true"), step_seconds(model, x, y, "bf16-mixed")
    measured = f"one step of {len(x)} images: float32 {fp32 * 1e3:.1f} ms, bfloat16 {bf16 * 1e3:.1f} ms"
    if bf16 < fp32:
        return PrecisionChoice("bf16-mixed", f"{cpu.model} has {' '.join(native)}; {measured}")
    return PrecisionChoice("32-true", f"{cpu.model} has {' '.join(native)} but bfloat16 is not faster; {measured}")


def choose_precision(accelerator: str, processes: int, model: nn.Module, input_shape: tuple[int, ...],
                     num_classes: int) -> PrecisionChoice:
    """The precision for ``trainer.precision: auto`` on ``accelerator`` (``cpu``, ``cuda``/``gpu``, ``auto`` or
    another Lightning accelerator) for ``model`` taking images of ``input_shape`` (C, H, W); ``processes`` > 1 on
    a CPU is refused (each process would measure for itself and could choose differently)."""
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    if accelerator in ("cuda", "gpu"):
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return PrecisionChoice("bf16-mixed", f"{torch.cuda.get_device_name()} supports bfloat16")
        return PrecisionChoice("16-mixed", "this GPU has no bfloat16: float16 with loss scaling")
    if accelerator != "cpu":
        return PrecisionChoice("32-true", f"no automatic choice on accelerator {accelerator!r}")
    if processes > 1:
        raise UserError(f"trainer.precision auto measures the CPU in one process, not {processes}: set "
                        "--trainer.precision 32-true (or bf16-mixed) for several processes")
    generator = torch.Generator().manual_seed(0)
    x = torch.rand((MEASURE_BATCH, *input_shape), generator=generator)
    y = torch.randint(num_classes, (MEASURE_BATCH,), generator=generator)
    return choose_cpu_precision(model, x, y)
