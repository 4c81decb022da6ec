"""ODIN speed on DenseNet-BC-100: scoring vs its floor, grid search vs the straightforward loop, vs pytorch-ood,
and 2 processes vs 1.

    python benchmarks/odin_speed.py [--images 256] [--batch_size 64] [--grid_images 16] [--device cpu|cuda]

(a) ODIN scoring time / (MSP time + one forward-plus-input-gradient pass), same batches; goal <= 1.10.
(b) the paper's grid (10 T x 21 epsilon): the straightforward loop (perturb and re-score per setting) / ours;
    goal >= 3.2 (floor on this CPU about 3.5). Runs on --grid_images images (the loop is slow).
(c) pytorch-ood's ODIN detector / ours at T=1000, epsilon=0.0014, same model and inputs; scores agree up to sign
    (pytorch-ood returns -score) except where an input gradient is exactly 0 (torch.sign gives 0, ODIN +1).
(d) scoring with 2 processes of 1 thread each vs 1 process of 1 thread, both through odin-pl's runtime (Lightning
    Fabric starts the second process; gloo, sharded, gathered); goal >= 1.7.
The model has random weights (speed does not depend on them). Timings are medians of --repeats runs, the timed
functions of a part taking turns on each batch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import timm  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

import odin_pl  # noqa: E402,F401
from odin_pl.distributed import world  # noqa: E402
from odin_pl.evaluation.options import RuntimeOptions  # noqa: E402
from odin_pl.methods import create_method  # noqa: E402
from odin_pl.protocol.run import score_plan  # noqa: E402
from odin_pl.evaluation.runtime import start_processes  # noqa: E402
from odin_pl.methods.odin import msp_score, odin_score, score_settings  # noqa: E402

STD = (0.2470, 0.2435, 0.2616)
T, EPS = 1000.0, 0.0014


def make_model(device: str) -> torch.nn.Module:
    """DenseNet-BC-100 with random weights and BatchNorm statistics calibrated on random inputs, so that its
    logits have a trained network's scale (uncalibrated, they reach 1e5 and float32/TF32 rounding dominates)."""
    torch.manual_seed(0)
    model = timm.create_model("densenet_bc_100", num_classes=10).to(device)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration batches
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(64, 3, 32, 32, device=device))
    return model.eval()


def timed(fns: dict[str, Callable[[torch.Tensor], object]], inputs: list[torch.Tensor], device: str, repeats: int,
          warmup: bool = True) -> dict[str, tuple[float, list]]:
    """name -> (median over repeats of the wall time of fn over all inputs, fn's outputs of the last repeat), after
    one warm-up call of each on the first input unless told not to. The functions take turns on each input, so
    that a drift of the machine's speed falls on all of them alike instead of on whichever runs first."""
    if warmup:
        for fn in fns.values():
            fn(inputs[0])
    times: dict[str, list[float]] = {name: [] for name in fns}
    outputs: dict[str, list] = {}
    for _ in range(repeats):
        spent = dict.fromkeys(fns, 0.0)
        outputs = {name: [] for name in fns}
        for x in inputs:
            for name, fn in fns.items():
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                start = time.perf_counter()
                outputs[name].append(fn(x))
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                spent[name] += time.perf_counter() - start
        for name in fns:
            times[name].append(spent[name])
    return {name: (statistics.median(times[name]), outputs[name]) for name in fns}


def forward_and_input_gradient(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The floor's second part, written plainly: one forward with a graph and d loss / d x."""
    x = x.clone().requires_grad_(True)
    logits = model(x)
    loss = F.cross_entropy(logits / T, logits.argmax(1), reduction="sum")
    return torch.autograd.grad(loss, x)[0]


def bench_scoring(model, batches, device, repeats) -> dict[str, float]:
    r = timed({"msp": lambda x: msp_score(model, x), "fwd+grad": lambda x: forward_and_input_gradient(model, x),
               "odin": lambda x: odin_score(model, x, T, EPS, STD)}, batches, device, repeats)
    return {name: seconds for name, (seconds, _) in r.items()}


def bench_grid(model, x, device, repeats) -> dict[str, float]:
    settings = create_method("odin").grid()  # the paper's grid
    ours, (fast,) = timed({"ours": lambda x: score_settings(model, x, settings, STD, forward_batch_size=4 * len(x))},
                          [x], device, repeats)["ours"]
    loop, (slow,) = timed({"loop": lambda x: torch.stack([odin_score(model, x, t, e, STD) for t, e in settings])},
                          [x], device, 1, warmup=False)["loop"]  # 210 calls: warm after the first
    return {"ours": ours, "loop": loop, "max_diff": float((fast - slow).abs().max())}


def bench_pytorch_ood(model, batches, device, repeats) -> dict[str, float]:
    from pytorch_ood.detector import ODIN

    detector = ODIN(model, eps=EPS, temperature=T, norm_std=list(STD))
    r = timed({"theirs": detector.predict, "ours": lambda x: odin_score(model, x, T, EPS, STD)}, batches, device,
              repeats)
    (theirs, their_scores), (ours, our_scores) = r["theirs"], r["ours"]
    diff = max(float((a + b).abs().max()) for a, b in zip(our_scores, their_scores))
    return {"theirs": theirs, "ours": ours, "max_diff": diff}


def _time_scoring(images: torch.Tensor, batch_size: int, repeats: int, barrier: Callable[[], object]) -> float:
    """Median wall time of scoring ``images`` (this process's share, in a process group) at T, EPS; ``barrier``
    lines the processes up before and after each timed pass, so that the slower one sets the time."""
    model = make_model("cpu")
    dataset = TensorDataset(images, torch.zeros(len(images)))
    warm = images[:batch_size * world()[1]]  # a full batch on every process: the timed shapes are warm
    score_plan(model, TensorDataset(warm, torch.zeros(len(warm))), {"odin": [(T, EPS)]}, input_std=STD,
                  batch_size=batch_size)
    times = []
    for _ in range(repeats):
        barrier()
        start = time.perf_counter()
        score_plan(model, dataset, {"odin": [(T, EPS)]}, input_std=STD, batch_size=batch_size)
        barrier()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _runtime_worker(processes: int, images: int, batch_size: int, repeats: int) -> None:
    """``--worker N``: score through odin-pl's runtime (Fabric; N > 1 starts the other processes by running this
    command line again), 1 thread per process; process 0 prints the median time."""
    fabric = start_processes(RuntimeOptions(accelerator="cpu", devices=processes), may_start_processes=True)
    torch.set_num_threads(1)
    seconds = _time_scoring(_images(images), batch_size, repeats, fabric.barrier)
    if fabric.global_rank == 0:
        print(f"SECONDS {seconds}")


def _independent_worker(rank: int, world_size: int, images: torch.Tensor, batch_size: int, repeats: int, out: str,
                        barrier) -> None:
    """One of ``world_size`` processes with no process group, each scoring its own contiguous part alone: the
    machine's ceiling for (d)."""
    torch.set_num_threads(1)
    seconds = _time_scoring(images.tensor_split(world_size)[rank], batch_size, repeats, barrier.wait)
    if rank == 0:
        Path(out).write_text(str(seconds))


def bench_processes(n_images: int, batch_size: int, repeats: int) -> dict[str, float]:
    """Median times of scoring with 1 process and with 2 (sharded, gathered) through the runtime, and with 2
    independent processes, each with 1 thread."""
    result = {}
    for key, processes in (("one", 1), ("two", 2)):
        command = [sys.executable, __file__, "--worker", str(processes), "--images", str(n_images), "--batch_size",
                   str(batch_size), "--repeats", str(repeats)]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                              check=True)
        result[key] = float(next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("SECONDS")))
    out = Path(f"/tmp/odin_speed_{os.getpid()}_independent.txt")
    barrier = torch.multiprocessing.get_context("spawn").Barrier(2)
    torch.multiprocessing.spawn(_independent_worker, nprocs=2,
                                args=(2, _images(n_images), batch_size, repeats, str(out), barrier))
    result["independent"] = float(out.read_text())
    out.unlink()
    return result


def _images(n: int) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(n, 3, 32, 32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--grid_images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: a,b,c,d")
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)  # (d)'s timed processes
    args = parser.parse_args()
    if args.worker:
        _runtime_worker(args.worker, args.images, args.batch_size, args.repeats)
        return
    skip = set(args.skip.split(","))
    images = _images(args.images)
    model = make_model(args.device)
    batches = [x.to(args.device) for x in images.split(args.batch_size)]
    device_name = (torch.cuda.get_device_name() if args.device.startswith("cuda")
                   else f"CPU, {torch.get_num_threads()} threads")
    print(f"DenseNet-BC-100, {args.images} images at batch {args.batch_size} (grid: {args.grid_images} images), "
          f"{device_name}, torch {torch.__version__}")
    rows = []
    if "a" not in skip:
        r = bench_scoring(model, batches, args.device, args.repeats)
        floor = r["msp"] + r["fwd+grad"]
        rows.append(("(a) ODIN / (MSP + fwd+grad)", f"{r['odin']:.2f}s / {floor:.2f}s", r["odin"] / floor, "<= 1.10"))
        rows.append(("    ODIN / MSP", f"{r['odin']:.2f}s / {r['msp']:.2f}s", r["odin"] / r["msp"], ""))
    if "b" not in skip:
        r = bench_grid(model, images[:args.grid_images].to(args.device), args.device, args.repeats)
        rows.append(("(b) grid: loop / ours", f"{r['loop']:.2f}s / {r['ours']:.2f}s", r["loop"] / r["ours"],
                     f">= 3.2 (max |diff| {r['max_diff']:.1e})"))
    if "c" not in skip:
        r = bench_pytorch_ood(model, batches, args.device, args.repeats)
        rows.append(("(c) pytorch-ood / ours", f"{r['theirs']:.2f}s / {r['ours']:.2f}s", r["theirs"] / r["ours"],
                     f"scores agree: max |ours + theirs| {r['max_diff']:.1e}"))
    if "d" not in skip and args.device == "cpu":
        r = bench_processes(args.images, args.batch_size, args.repeats)
        rows.append(("(d) 1 process / 2 processes (1 thread each)", f"{r['one']:.2f}s / {r['two']:.2f}s",
                     r["one"] / r["two"], ">= 1.7"))
        independent = f"{r['one']:.2f}s / {r['independent']:.2f}s"
        rows.append(("    the machine's ceiling: 1 / 2 independent processes", independent, r["one"] / r["independent"],
                     "no process group, halves scored apart"))
    print("\n| measure | times | ratio | goal / note |\n|---|---|---|---|")
    for name, times, ratio, note in rows:
        print(f"| {name} | {times} | {ratio:.2f} | {note} |")


if __name__ == "__main__":
    main()
