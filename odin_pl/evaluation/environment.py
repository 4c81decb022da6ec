"""What an evaluation's numbers may depend on besides its inputs: library versions, CPU, device and threads."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import lightning
import numpy
import torch


def cpu_name() -> str:
    """The CPU model (``model name`` of /proc/cpuinfo on Linux, else the platform's processor string)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe_environment(device: torch.device | str) -> dict[str, Any]:
    """Versions, CPU, the scoring device and this process's thread count (recorded in results.json)."""
    device = torch.device(device)
    return {"torch": torch.__version__, "lightning": lightning.__version__, "numpy": numpy.__version__,
            "python": platform.python_version(), "cpu": cpu_name(), "threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
