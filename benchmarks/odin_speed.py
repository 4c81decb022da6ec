"""ODIN speed on DenseNet-BC-100: scoring vs its floor, grid search vs the straightforward loop, vs pytorch-ood,
and 2 processes vs 1.

    python benchmarks/odin_speed.py [--images 256] [--batch_size 64] [--grid_images 16] [--device cpu|cuda]

(a) ODIN scoring time / (MSP time + one forward-plus-input-gradient pass), same batches; goal <= 1.10.
(b) the paper's grid (10 T x 21 epsilon): the straightforward loop (perturb and re-score per setting) / ours;
    goal >= 3.2 (floor on this CPU about 3.5). Runs on --grid_images images (the loop is slow).
(c) pytorch-ood's ODIN detector / ours at T=1000, epsilon=0.0014, same model and inputs; scores agree up to sign
    (pytorch-ood returns -score) except where an input gradient is exactly 0 (torch.sign gives 0, ODIN +1).
(d) scoring with 2 processes of 1 thread each vs 1 process of 1 thread (gloo, sharded, gathered); goal >= 1.7.
The model has random weights (speed does not depend on them). Timings are medians of --repeats runs. On the CPU
the process keeps freed memory (odin_pl.allocator, as evaluate.py does), for ours and the baselines alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
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
from odin_pl.allocator import retain_freed_memory  # noqa: E402
from odin_pl.distributed import free_port, init_process_group  # noqa: E402
from odin_pl.protocol import score_dataset  # noqa: E402
from odin_pl.scoring import msp_score, odin_score, score_settings  # noqa: E402
from odin_pl.tuning import Grid  # noqa: E402

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


def timed(fn: Callable[[], object], device: str, repeats: int, warmup: bool = True) -> tuple[float, object]:
    """(median wall time of fn() over repeats, fn()'s last result), after one warm-up call unless told not to."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def forward_and_input_gradient(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The floor's second part, written plainly: one forward with a graph and d loss / d x."""
    x = x.clone().requires_grad_(True)
    logits = model(x)
    loss = F.cross_entropy(logits / T, logits.argmax(1), reduction="sum")
    return torch.autograd.grad(loss, x)[0]


def bench_scoring(model, batches, device, repeats) -> dict[str, float]:
    msp, _ = timed(lambda: [msp_score(model, x) for x in batches], device, repeats)
    grad, _ = timed(lambda: [forward_and_input_gradient(model, x) for x in batches], device, repeats)
    odin, _ = timed(lambda: [odin_score(model, x, T, EPS, STD) for x in batches], device, repeats)
    return {"msp": msp, "fwd+grad": grad, "odin": odin}


def bench_grid(model, x, device, repeats) -> dict[str, float]:
    settings = Grid().settings
    ours, fast = timed(lambda: score_settings(model, x, settings, STD, forward_batch_size=4 * len(x)), device,
                       repeats)
    loop, slow = timed(lambda: torch.stack([odin_score(model, x, t, e, STD) for t, e in settings]), device, 1,
                       warmup=False)  # 210 calls: warm after the first
    return {"ours": ours, "loop": loop, "max_diff": float((fast - slow).abs().max())}


def bench_pytorch_ood(model, batches, device, repeats) -> dict[str, float]:
    from pytorch_ood.detector import ODIN

    detector = ODIN(model, eps=EPS, temperature=T, norm_std=list(STD))
    theirs, their_scores = timed(lambda: [detector.predict(x) for x in batches], device, repeats)
    ours, our_scores = timed(lambda: [odin_score(model, x, T, EPS, STD) for x in batches], device, repeats)
    diff = max(float((a + b).abs().max()) for a, b in zip(our_scores, their_scores))
    return {"theirs": theirs, "ours": ours, "max_diff": diff}


def _process_worker(rank: int, world_size: int, port: int, images: torch.Tensor, batch_size: int, repeats: int,
                    out: str, barrier) -> None:
    """Time scoring ``images`` with ``world_size`` processes: sharded and gathered in a process group (gloo), or,
    with ``port`` 0, each process scoring its own contiguous part alone (the machine's ceiling for the check)."""
    torch.set_num_threads(1)
    retain_freed_memory()
    if port:
        init_process_group(rank, world_size, port)
    else:
        images = images.tensor_split(world_size)[rank]
    model = make_model("cpu")
    dataset = TensorDataset(images, torch.zeros(len(images)))
    warm = images[:batch_size * (world_size if port else 1)]  # a full batch on every process: the timed shapes are warm
    score_dataset(model, TensorDataset(warm, torch.zeros(len(warm))), [(T, EPS)], input_std=STD,
                  batch_size=batch_size)
    times = []
    for _ in range(repeats):
        barrier.wait()
        start = time.perf_counter()
        score_dataset(model, dataset, [(T, EPS)], input_std=STD, batch_size=batch_size)
        barrier.wait()  # the slower process sets the time
        times.append(time.perf_counter() - start)
    if rank == 0:
        Path(out).write_text(str(statistics.median(times)))
    if port:
        torch.distributed.destroy_process_group()


def bench_processes(images: torch.Tensor, batch_size: int, repeats: int) -> dict[str, float]:
    """Median times of scoring with 1 process, 2 processes (sharded, gathered) and 2 independent processes, each
    with 1 thread."""
    os.environ["OMP_NUM_THREADS"] = "1"
    result = {}
    for key, world_size, grouped in (("one", 1, True), ("two", 2, True), ("independent", 2, False)):
        out = Path(f"/tmp/odin_speed_{os.getpid()}_{key}.txt")
        barrier = torch.multiprocessing.get_context("spawn").Barrier(world_size)
        torch.multiprocessing.spawn(_process_worker, args=(world_size, free_port() if grouped else 0, images,
                                                           batch_size, repeats, str(out), barrier), nprocs=world_size)
        result[key] = float(out.read_text())
        out.unlink()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--grid_images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: a,b,c,d")
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    if args.device == "cpu":
        retain_freed_memory()  # as evaluate.py does on the CPU; the (d) processes do the same
    torch.manual_seed(0)
    images = torch.randn(args.images, 3, 32, 32)
    model = make_model(args.device)
    batches = [x.to(args.device) for x in images.split(args.batch_size)]
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
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
        r = bench_processes(images, args.batch_size, args.repeats)
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
