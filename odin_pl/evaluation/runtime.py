"""The evaluation runtime: this process's Lightning :class:`~lightning.fabric.Fabric`, and the processes of a run.

Who starts the processes of a multi-process run:

* ``python evaluate.py --runtime.devices N`` starts them itself: Fabric runs the same command line again in N - 1
  child processes (and, with ``--runtime.num_nodes M``, joins the other nodes' through ``MASTER_ADDR``,
  ``MASTER_PORT`` and ``NODE_RANK``, as Lightning does);
* under ``torchrun`` (one node or several) or in a SLURM job step (``srun``), those started them; this process joins
  their process group and starts nothing (``devices`` and ``num_nodes`` default to theirs).

The library's scoring functions only use the process group Fabric sets up (``odin_pl.distributed``); they work
without one. CPU processes share the cores (Fabric gives each ``cores // processes`` threads unless
``OMP_NUM_THREADS`` says otherwise; torchrun sets it to 1).
"""

from __future__ import annotations

import os
import sys

from lightning.fabric import Fabric
from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

from odin_pl.evaluation.options import RuntimeOptions
from odin_pl.errors import UserError


def launcher_processes() -> tuple[int, int] | None:
    """(processes per node, nodes) that torchrun or SLURM started for this job, or None when neither did."""
    if TorchElasticEnvironment.detect():
        per_node = int(os.environ["LOCAL_WORLD_SIZE"])
        return per_node, int(os.environ["WORLD_SIZE"]) // per_node
    if SLURMEnvironment.detect():
        nodes = int(os.environ.get("SLURM_NNODES", os.environ.get("SLURM_JOB_NUM_NODES", "1")))
        per_node = os.environ.get("SLURM_NTASKS_PER_NODE")  # Lightning asks for --ntasks-per-node
        return (int(per_node) if per_node else int(os.environ["SLURM_NTASKS"]) // nodes), nodes
    return None


def create_fabric(options: RuntimeOptions) -> Fabric:
    """The Fabric of ``options``; ``devices`` and ``num_nodes`` left unset take torchrun's or SLURM's counts."""
    started = launcher_processes() or (1, 1)
    devices = options.devices or started[0]
    num_nodes = options.num_nodes or started[1]
    try:
        return Fabric(accelerator=options.accelerator, devices=devices, num_nodes=num_nodes,
                      strategy=options.strategy, precision=options.precision)
    except (ValueError, RuntimeError) as err:  # e.g. "cuda" on a machine without a GPU
        raise UserError(f"--runtime.accelerator {options.accelerator} --runtime.devices {devices}: {err}") from err


def start_processes(options: RuntimeOptions, *, may_start_processes: bool) -> Fabric:
    """This process's launched Fabric: its process group is set up when the run has several processes.

    ``may_start_processes``: whether this program may start the others itself by running its command line again
    (true for ``evaluate.py`` on the command line; not when a caller runs it in-process, such as a test, where
    ``sys.argv`` is the caller's).
    """
    fabric = create_fabric(options)
    environment = getattr(fabric.strategy, "cluster_environment", None)
    starts_processes = environment is not None and not environment.creates_processes_externally
    if fabric.world_size > 1 and starts_processes and not may_start_processes:
        raise UserError(f"{fabric.world_size} processes cannot be started from inside another program: it would "
                        f"run that program's command line ({' '.join(sys.argv)}) again. Run `python evaluate.py "
                        "... --runtime.devices N` from the shell, or under torchrun or SLURM")
    try:
        fabric.launch()
    except ValueError as err:  # the cluster's process counts disagree with --runtime.devices / --runtime.num_nodes
        raise UserError(f"{err} (--runtime.devices is Lightning's `devices`, --runtime.num_nodes its "
                        "`num_nodes`; leave them unset under torchrun or SLURM)") from err
    return fabric
