"""What each method costs beside ODIN, and what sharing saves: every registered method run alone through the
protocol (its fit included) against ODIN alone, and all of them in one run against the sum of running each alone.

    python benchmarks/methods_overhead.py [--images 64] [--train_images 512] [--batch_size 32] [--repeats 1]
                                          [--device cpu|cuda]

The network is DenseNet-BC-100 with random weights, calibrated as in odin_speed.py, with dropout p = 0.1 in its
dense layers (so that mcd can run; off in eval mode, so no other score changes). Every run scores the same random
in-distribution and OOD images through ``run_protocol`` in paper mode, each method over its default grid (ODIN over
a 3 x 3 (T, epsilon) grid; nnguide at k = 1: its bank of 1% of the training images is smaller than its k grid); a
fitted method's fits come from ``prepare_fits`` on --train_images random training images, on whose features the
classifier is fitted by least squares (so every class is predicted; tempscale fits on them with a fifth of the
labels moved, as its held-out split). In the run of all methods together one pass over each batch serves
every method that needs only the logits and h, and one pass over the training images serves every fit (gram adds
its two passes, mcd its 30 stochastic passes); goal: all together <= 0.3 of the sum. Timings are medians of
--repeats runs after one warm-up round (--repeats 0: one round, no warm-up), the runs taking turns; a method
this network cannot be scored by (a one-line refusal) is named with its reason and left out of the sums.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import timm
import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from odin_speed import STD  # noqa: E402

from odin_pl.errors import UserError  # noqa: E402
from odin_pl.methods import list_methods  # noqa: E402
from odin_pl.protocol import MethodGrid, ModelScorer, ProtocolPlan, run_protocol  # noqa: E402
from odin_pl.protocol.fits import prepare_fits  # noqa: E402

ODIN_GRID = {"temperature": (1.0, 10.0, 1000.0), "epsilon": (0.0, 0.002, 0.004)}
NNGUIDE_GRID = {"k": (1.0,)}  # its bank is 1% of the training images: a few, below its default k of 10 and 100
ALL = "all together"


def make_model(device: str) -> torch.nn.Module:
    """DenseNet-BC-100 (random weights, dropout 0.1) with BatchNorm statistics calibrated on random inputs."""
    torch.manual_seed(0)
    model = timm.create_model("densenet_bc_100", num_classes=10, drop_rate=0.1).to(device)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(64, 3, 32, 32, device=device))
    return model.eval()


@torch.no_grad()
def fit_classifier(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: str) -> None:
    """The classifier W, b fitted by least squares to 8 one_hot(y) on the features of x: every class predicted and
    correct on the training images, as the class-wise fits (she, gram, openmax) need."""
    h = model.forward_head(model.forward_features(x.to(device)), pre_logits=True).double()
    design = torch.cat([h, torch.ones(len(h), 1, dtype=h.dtype, device=h.device)], dim=1)
    solution = torch.linalg.lstsq(design.cpu(), 8.0 * torch.nn.functional.one_hot(y, 10).double()).solution
    classifier = model.get_classifier()
    classifier.weight.copy_(solution[:-1].T)
    classifier.bias.copy_(solution[-1])


def grid(name: str) -> MethodGrid:
    return MethodGrid.of(name, {"odin": ODIN_GRID, "nnguide": NNGUIDE_GRID}.get(name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="images per set (in-distribution and OOD)")
    parser.add_argument("--train_images", type=int, default=512, help="training images the fitted methods fit on")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = make_model(args.device)
    labels = torch.arange(args.images) % 10
    in_set = TensorDataset(torch.randn(args.images, 3, 32, 32), labels)
    ood = {"uniform": TensorDataset(torch.rand(args.images, 3, 32, 32) * 4 - 2, torch.zeros(args.images).long())}
    train_x, train_y = torch.randn(args.train_images, 3, 32, 32), torch.arange(args.train_images) % 10
    fit_classifier(model, train_x, train_y, args.device)
    train = TensorDataset(train_x, train_y)
    heldout = TensorDataset(train_x, torch.where(torch.arange(len(train_y)) % 5 == 0, (train_y + 1) % 10, train_y))

    def run(methods: list[MethodGrid]) -> object:
        folder = Path(tempfile.mkdtemp(prefix="methods_overhead_"))
        fits = None
        if any(g.method.needs_fit for g in methods):
            prepared = prepare_fits(model, methods, train, heldout=heldout, folder=folder, weights_sha256="random",
                                    batch_size=args.batch_size, device=args.device)
            fits, methods = prepared.fits, prepared.methods
        return run_protocol(ProtocolPlan(tuple(methods), n_tune=args.images // 4), in_set, ood,
                            ModelScorer(model, STD, args.batch_size, device=args.device, fits=fits))

    runs: dict[str, Callable[[], object]] = {name: (lambda name=name: run([grid(name)])) for name in list_methods()}
    runs[ALL] = lambda: run([grid(name) for name in list_methods() if name not in refused])
    times: dict[str, list[float]] = {name: [] for name in runs}
    refused: dict[str, str] = {}  # methods this network cannot be scored by, with the reason (not timed)
    for _ in range(args.repeats + 1):  # with --repeats > 0 the first round warms up and is not counted
        for name, job in runs.items():
            if name in refused:
                continue
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            try:
                job()
            except UserError as err:
                refused[name] = str(err)
                continue
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    counted = slice(1, None) if args.repeats else slice(None)
    medians = {name: statistics.median(values[counted]) for name, values in times.items() if name not in refused}
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"DenseNet-BC-100, {args.images} images per set and {args.train_images} training images at batch "
          f"{args.batch_size}, {device}, torch {torch.__version__}, median of {max(args.repeats, 1)}")
    print("\n| run | time | ratio to ODIN alone |\n|---|---|---|")
    base = medians["odin"]
    timed = [name for name in list_methods() if name in medians]
    for name in timed:
        print(f"| {name} | {medians[name]:.2f}s | {medians[name] / base:.3f} |")
    total = sum(medians[name] for name in timed)
    print(f"| sum of each alone | {total:.2f}s | {total / base:.3f} |")
    print(f"| {ALL} ({len(timed)} methods) | {medians[ALL]:.2f}s | {medians[ALL] / base:.3f} |")
    print(f"\nall together / sum of each alone: {medians[ALL] / total:.3f} (goal: <= 0.3)")
    for name, reason in refused.items():
        print(f"refused on this network (not timed): {name}: {reason}")

if __name__ == "__main__":
    main()
