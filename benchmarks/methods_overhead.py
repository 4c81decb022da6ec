"""What the other methods add to a protocol run: ODIN alone vs ODIN + Energy + MaxLogit + Entropy, vs ODIN + the
feature methods (ReAct + KNN; Mahalanobis), and what their fits cost.

    python benchmarks/methods_overhead.py [--images 64] [--train_images 512] [--batch_size 32] [--repeats 3]
                                          [--device cpu|cuda]

Every run scores the same in-distribution and OOD images (random images, DenseNet-BC-100 with random weights
calibrated as in odin_speed.py) through ``run_protocol`` in paper mode: ODIN over a 3 x 3 (T, epsilon) grid, Energy
over its default 10 temperatures, ReAct over its 4 percentiles, KNN over its 6 k, Mahalanobis over ODIN's 3
epsilons. The logit methods reuse each batch's clean forward pass, so their cost is a softmax, a logsumexp and a max
on logits (goal: at most 5% added); ReAct and KNN reuse it too (through the penultimate features) and add the
classifier per percentile and the distances to the bank; Mahalanobis adds one gradient and the perturbed forward
passes of its epsilons, as ODIN does per temperature. The fits of the three feature methods come from one pass over
--train_images training images (``odin_pl.protocol.fits.prepare_fits``), timed on their own row. Timings are medians of
--repeats runs, the configurations taking turns.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from odin_speed import STD, make_model  # noqa: E402

from odin_pl.protocol.fits import prepare_fits  # noqa: E402
from odin_pl.protocol import MethodGrid, ModelScorer, ProtocolPlan, run_protocol  # noqa: E402

ODIN_GRID = {"temperature": (1.0, 10.0, 1000.0), "epsilon": (0.0, 0.002, 0.004)}
FITS = "fits of mahalanobis+react+knn"


def configurations() -> dict[str, list[MethodGrid]]:
    odin = MethodGrid.of("odin", ODIN_GRID)
    return {"odin": [odin],
            "odin+energy+maxlogit+entropy": [odin, MethodGrid.of("energy"), MethodGrid.of("maxlogit"),
                                             MethodGrid.of("entropy")],
            "odin+react+knn": [odin, MethodGrid.of("react"), MethodGrid.of("knn")],
            "odin+mahalanobis": [odin, MethodGrid.of("mahalanobis", {"epsilon": ODIN_GRID["epsilon"]})]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="images per set (in-distribution and OOD)")
    parser.add_argument("--train_images", type=int, default=512,
                        help="training images the feature methods fit on (Mahalanobis: more than the 342 features)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = make_model(args.device)
    in_set = TensorDataset(torch.randn(args.images, 3, 32, 32), torch.zeros(args.images))
    ood = {"uniform": TensorDataset(torch.rand(args.images, 3, 32, 32) * 4 - 2, torch.zeros(args.images))}
    train = TensorDataset(torch.randn(args.train_images, 3, 32, 32), torch.arange(args.train_images) % 10)
    configs = configurations()
    fitted = [grid for grid in configs["odin+react+knn"] + configs["odin+mahalanobis"] if grid.name != "odin"]
    folder = Path(tempfile.mkdtemp(prefix="methods_overhead_"))

    def fit() -> object:
        return prepare_fits(model, fitted, train, folder=folder, weights_sha256="random", batch_size=args.batch_size,
                            device=args.device)

    fits = fit().fits
    runs: dict[str, Callable[[], object]] = {
        name: (lambda methods=methods: run_protocol(ProtocolPlan(methods, n_tune=args.images // 4), in_set, ood,
                                                    ModelScorer(model, STD, args.batch_size, device=args.device,
                                                                fits=fits)))
        for name, methods in configs.items()}
    runs[FITS] = fit
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats + 1):  # the first round warms up and is not counted
        for name, run in runs.items():
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            run()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values[1:]) for name, values in times.items()}
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"DenseNet-BC-100, {args.images} images per set and {args.train_images} training images at batch "
          f"{args.batch_size}, {device}, torch {torch.__version__}, median of {args.repeats}")
    print("\n| run | time | ratio to ODIN alone | goal |\n|---|---|---|---|")
    base = medians["odin"]
    goals = {"odin+energy+maxlogit+entropy": "<= 1.05"}
    for name, seconds in medians.items():
        print(f"| {name} | {seconds:.2f}s | {seconds / base:.3f} | {goals.get(name, '')} |")


if __name__ == "__main__":
    main()
