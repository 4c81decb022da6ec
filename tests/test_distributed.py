"""CPU evaluation processes split the cores between them instead of each starting one thread per core."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from odin_pl.distributed import _cpu_count, free_port, init_process_group


def _report_threads(rank: int, world_size: int, port: int, out: str) -> None:
    init_process_group(rank, world_size, port)
    try:
        Path(out, str(rank)).write_text(str(torch.get_num_threads()))
    finally:
        torch.distributed.destroy_process_group()


def _threads_of_two_processes(tmp_path: Path) -> list[int]:
    torch.multiprocessing.spawn(_report_threads, args=(2, free_port(), str(tmp_path)), nprocs=2)
    return [int((tmp_path / str(rank)).read_text()) for rank in range(2)]


def test_cpu_processes_share_the_cores(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert _threads_of_two_processes(tmp_path) == [max(1, _cpu_count() // 2)] * 2


def test_omp_num_threads_wins(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # torch caps it at the core count
    assert _threads_of_two_processes(tmp_path) == [min(2, _cpu_count())] * 2
