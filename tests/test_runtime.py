"""The evaluation runtime (odin_pl.evaluation.runtime): every way of running several processes gives exactly one
process's
results, only global rank 0 writes files, and a failing process ends the run.

Each multi-process run is a real launch in subprocesses (gloo on the CPU) of ``evaluate.py`` on the quickstart in
float64 with a small grid and 200 images per OOD set; the reference is one in-process run of the same command.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, free_port

import evaluate
from odin_pl.distributed import agree_on_failure, gather_shards
from odin_pl.errors import NonFiniteScoresError, PeerFailedError, UserError
from odin_pl.evaluation.options import RuntimeOptions
from odin_pl.evaluation.runtime import create_fabric, launcher_processes

SMALL = ["--ood.sets", "gaussian,photos", "--ood.num_images", "200", "--tuning.temperatures", "1,1000",
         "--tuning.epsilons", "0,0.002", "--output.logger", "false", "--runtime.precision", "64-true",
         "--bootstrap.resamples", "20"]
SCORE_FILES = ("in_distribution__tune", "in_distribution__test", "gaussian__tune", "photos__test")
TIMEOUT = 240


def _evaluate_command(ckpt: str, out: Path) -> list[str]:
    return ["evaluate.py", "protocol", "--ckpt", ckpt, *SMALL, "--output.dir", str(out)]


def _clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without the variables of a launcher (torchrun, SLURM, Lightning's own)."""
    launcher = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT",
                "OMP_NUM_THREADS", "TORCHELASTIC_RUN_ID", "GROUP_RANK")
    env = {k: v for k, v in os.environ.items() if k not in launcher and not k.startswith("SLURM_")}
    return {**env, **extra}


def _run_all(commands: list[tuple[list[str], dict[str, str]]]) -> list[subprocess.CompletedProcess]:
    """Start every command at once (the processes of one run) and wait for all of them."""
    procs = [subprocess.Popen([sys.executable, *cmd], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for cmd, env in commands]
    results = []
    for proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            raise
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return results


def _assert_ok(results: list[subprocess.CompletedProcess]) -> None:
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def reference(quickstart_ckpt: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One process, in-process: the output folder every multi-process run must reproduce."""
    out = tmp_path_factory.mktemp("one_process")
    evaluate.main(_evaluate_command(quickstart_ckpt, out)[1:])
    return out


def _assert_equals_reference(out: Path, reference: Path, processes: int) -> dict:
    """The same records and tunings as one process, scores equal to float64 rounding; returns results.json."""
    ours, theirs = (json.loads((folder / "results.json").read_text()) for folder in (out, reference))
    assert ours["records"] == theirs["records"] and ours["tuning"] == theirs["tuning"]
    assert ours["runtime"]["processes"] == processes and theirs["runtime"]["processes"] == 1
    for name in SCORE_FILES:  # a batch of another composition may round in another order
        torch.testing.assert_close(torch.load(out / "scores" / f"{name}.pt")["scores"],
                                   torch.load(reference / "scores" / f"{name}.pt")["scores"], rtol=0, atol=1e-12)
    return ours


def test_two_processes_from_the_command_line_equal_one(quickstart_ckpt: str, reference: Path, tmp_path) -> None:
    """``evaluate.py --devices 2``: Fabric runs the command line again for process 1; the cores are shared."""
    out = tmp_path / "two"
    _assert_ok(_run_all([([*_evaluate_command(quickstart_ckpt, out), "--devices", "2"], _clean_env())]))
    results = _assert_equals_reference(out, reference, processes=2)
    cores = len(os.sched_getaffinity(0))
    assert results["runtime"]["threads_per_process"] == max(1, cores // 2)


def test_torchrun_on_one_node_equals_one_process(quickstart_ckpt: str, reference: Path, tmp_path) -> None:
    out = tmp_path / "torchrun"
    command = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               *_evaluate_command(quickstart_ckpt, out)]  # no --devices: torchrun's count
    _assert_ok(_run_all([(command, _clean_env())]))
    _assert_equals_reference(out, reference, processes=2)


def test_two_simulated_nodes_equal_one_process_and_only_rank_zero_writes(quickstart_ckpt: str, reference: Path,
                                                                         tmp_path) -> None:
    """Two ``torchrun --nnodes 2`` launches on 127.0.0.1; each node is told its own output folder, so the folder
    of node 1 shows whether any process but global rank 0 wrote a file."""
    port = str(free_port())
    folders = [tmp_path / "node0", tmp_path / "node1"]
    commands = [(["-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1",
                  "--master_addr", "127.0.0.1", "--master_port", port, *_evaluate_command(quickstart_ckpt, folder)],
                 _clean_env()) for rank, folder in enumerate(folders)]
    results = _run_all(commands)
    _assert_ok(results)
    _assert_equals_reference(folders[0], reference, processes=2)
    assert not folders[1].exists()
    assert "| gaussian |" in results[0].stdout and "| gaussian |" not in results[1].stdout


def _slurm_env(rank: int, port: int) -> dict[str, str]:
    """The variables ``srun`` sets for task ``rank`` of a 2-task job on one node (``--ntasks-per-node 2``)."""
    return _clean_env(SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="2", SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank),
                      SLURM_NODEID="0", SLURM_NNODES="1", SLURM_NODELIST="localhost", SLURM_JOB_NAME="evaluate",
                      SLURM_JOB_ID="4242", MASTER_PORT=str(port))


def test_a_slurm_job_of_two_tasks_equals_one_process(quickstart_ckpt: str, reference: Path, tmp_path) -> None:
    port, out = free_port(), tmp_path / "slurm"
    _assert_ok(_run_all([(_evaluate_command(quickstart_ckpt, out), _slurm_env(rank, port)) for rank in (0, 1)]))
    _assert_equals_reference(out, reference, processes=2)


def test_a_failing_process_ends_the_whole_run_within_seconds(quickstart_ckpt: str, tmp_path) -> None:
    """Task 1 cannot read its checkpoint after the process group is up; task 0 must not wait for it."""
    port, out = free_port(), tmp_path / "failing"
    commands = [(_evaluate_command(ckpt, out), _slurm_env(rank, port))
                for rank, ckpt in enumerate([quickstart_ckpt, str(tmp_path / "missing.ckpt")])]
    start = time.monotonic()
    zero, one = _run_all(commands)
    assert time.monotonic() - start < 60
    assert one.returncode == 2 and "error (process 1 of 2): checkpoint" in one.stderr
    assert zero.returncode == 1 and "Traceback" not in zero.stderr
    assert "stopped because another process of the run failed" in zero.stderr.strip().splitlines()[-1]
    assert not (out / "results.json").exists()


def test_several_processes_are_not_started_from_inside_another_program(quickstart_ckpt: str, tmp_path) -> None:
    with pytest.raises(ValueError, match="cannot be started from inside another program"):
        evaluate.main(_evaluate_command(quickstart_ckpt, tmp_path)[1:] + ["--devices", "2"])
    assert not tmp_path.joinpath("results.json").exists()


@pytest.mark.parametrize(("option", "value", "message"), [
    ("precision", "16-mixed", "mixed precision is refused"),
    ("precision", "bf16-true", "must be 32-true or 64-true"),
    ("strategy", "fsdp", "needs no sharded strategy"),
    ("accelerator", "cuda:1", "CUDA_VISIBLE_DEVICES"),
    ("devices", 0, "must be >= 1"),
    ("num_nodes", 0, "must be >= 1"),
])
def test_runtime_options_refuse_what_scoring_cannot_use(option: str, value, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RuntimeOptions(**{option: value})


def test_devices_and_nodes_default_to_the_launchers(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("SLURM_")] + ["TORCHELASTIC_RUN_ID"]:
        monkeypatch.delenv(name, raising=False)
    assert launcher_processes() is None
    monkeypatch.setattr(torch.distributed, "is_torchelastic_launched", lambda: True)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("WORLD_SIZE", "12")
    assert launcher_processes() == (4, 3)
    monkeypatch.setattr(torch.distributed, "is_torchelastic_launched", lambda: False)
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4")
    monkeypatch.setenv("SLURM_NNODES", "2")
    monkeypatch.setenv("SLURM_JOB_NAME", "evaluate")
    assert launcher_processes() == (4, 2)
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")  # an interactive allocation: not a job step of several tasks
    assert launcher_processes() is None


def test_an_unavailable_accelerator_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ValueError, match="--runtime.accelerator cuda"):
        create_fabric(RuntimeOptions(accelerator="cuda"))


def _failing_process(rank: int, port: int, out: str) -> None:
    """Process 0 of 2 fails, process 1 does not: both must stop (and say why) instead of waiting in a gather."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        agree_on_failure(NonFiniteScoresError("rank 0 saw a NaN") if rank == 0 else None)
    except UserError as err:
        Path(out, f"rank{rank}.txt").write_text(f"{type(err).__name__}: {err}")
    finally:
        torch.distributed.destroy_process_group()


def test_one_process_failure_stops_every_process(tmp_path: Path) -> None:
    torch.multiprocessing.spawn(_failing_process, args=(free_port(), str(tmp_path)), nprocs=2)
    assert (tmp_path / "rank0.txt").read_text() == "NonFiniteScoresError: rank 0 saw a NaN"
    assert (tmp_path / "rank1.txt").read_text() == ("UserError: another process of the run stopped with an error "
                                                    "(see its message)")


def _own_error_process(rank: int, port: int, out: str) -> None:
    """Process 1 of 2 fails with a RuntimeError of its own, outside any collective, and exits; process 0 waits in
    a gather, which fails when process 1's connection closes."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
    try:
        if rank == 1:
            raise RuntimeError("process 1's own failure")
        gather_shards(torch.zeros(1), 2)
    except RuntimeError as err:
        Path(out, f"rank{rank}.txt").write_text(f"{type(err).__name__}: {err}".splitlines()[0])


def test_a_process_own_runtime_error_is_not_blamed_on_another_process(tmp_path: Path) -> None:
    """Before: gloo's error in a collective and a process's own error were both a plain RuntimeError, and the
    command line told them apart by type alone, so the failing process itself said "stopped because another
    process of the run failed"."""
    torch.multiprocessing.spawn(_own_error_process, args=(free_port(), str(tmp_path)), nprocs=2)
    assert (tmp_path / "rank1.txt").read_text() == "RuntimeError: process 1's own failure"
    assert (tmp_path / "rank0.txt").read_text().startswith("PeerFailedError: ")


def test_the_command_line_names_only_a_failed_collective_as_another_process_failure(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Before: in a run of several processes any RuntimeError printed "stopped because another process of the run
    failed", the process's own bug included."""
    monkeypatch.setattr(evaluate, "_process_label", lambda: " (process 1 of 2)")

    def own_bug() -> None:
        raise RuntimeError("an own bug")

    monkeypatch.setattr(evaluate, "main", own_bug)
    with pytest.raises(RuntimeError, match="an own bug"):
        evaluate.run_command_line()

    def peer_gone() -> None:
        raise PeerFailedError("Connection closed by peer")

    monkeypatch.setattr(evaluate, "main", peer_gone)
    assert evaluate.run_command_line() == 1
    assert capsys.readouterr().err.strip() == ("evaluate.py: error (process 1 of 2): stopped because another process "
                                               "of the run failed (see its message): Connection closed by peer")
