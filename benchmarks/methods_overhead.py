"""What the logit-only methods add to a protocol run: ODIN alone vs ODIN + Energy + MaxLogit + Entropy.

    python benchmarks/methods_overhead.py [--images 64] [--batch_size 32] [--repeats 3] [--device cpu|cuda]

Both runs score the same in-distribution and OOD images (random images, DenseNet-BC-100 with random weights
calibrated as in odin_speed.py) through ``run_protocol`` in paper mode: ODIN over a 3 x 3 (T, epsilon) grid, Energy
over its default 10 temperatures. The extra methods reuse each batch's clean forward pass, so their cost is a
softmax, a logsumexp and a max on logits; goal: at most 5% added. Timings are medians of --repeats runs, the two
configurations taking turns.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from odin_speed import STD, make_model  # noqa: E402

from odin_pl.protocol import MethodGrid, run_protocol  # noqa: E402

ODIN_GRID = {"temperature": (1.0, 10.0, 1000.0), "epsilon": (0.0, 0.002, 0.004)}


def configurations() -> dict[str, list[MethodGrid]]:
    odin = MethodGrid.of("odin", ODIN_GRID)
    return {"odin": [odin],
            "odin+energy+maxlogit+entropy": [odin, MethodGrid.of("energy"), MethodGrid.of("maxlogit"),
                                             MethodGrid.of("entropy")]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="images per set (in-distribution and OOD)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = make_model(args.device)
    in_set = TensorDataset(torch.randn(args.images, 3, 32, 32), torch.zeros(args.images))
    ood = {"uniform": TensorDataset(torch.rand(args.images, 3, 32, 32) * 4 - 2, torch.zeros(args.images))}
    configs = configurations()
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.repeats + 1):  # the first round warms up and is not counted
        for name, methods in configs.items():
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            run_protocol(model, in_set, ood, input_std=STD, methods=methods, n_tune=args.images // 4,
                         batch_size=args.batch_size, device=args.device, progress=False)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values[1:]) for name, values in times.items()}
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"DenseNet-BC-100, {args.images} images per set at batch {args.batch_size}, {device}, "
          f"torch {torch.__version__}, median of {args.repeats}")
    print("\n| protocol run | time | ratio to ODIN alone | goal |\n|---|---|---|---|")
    base = medians["odin"]
    for name, seconds in medians.items():
        print(f"| {name} | {seconds:.2f}s | {seconds / base:.3f} | {'<= 1.05' if name != 'odin' else ''} |")


if __name__ == "__main__":
    main()
