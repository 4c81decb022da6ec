"""MNIST's training DataLoader (``datamodules.MNISTDataModule``) against torchvision's on the same files.

Both load ``<data_root>/MNIST/raw`` (unpacked idx files, torchvision's layout) and iterate ``--images`` training
images at batch 128 with no worker processes: ours through ``train_dataloader()`` (shuffled by (seed, epoch)),
torchvision's as ``DataLoader(torchvision.datasets.MNIST(root, transform=ToTensor()), shuffle=True)``. Each side
is timed ``--repeats`` times, alternating; the fastest pass of each is reported.

    python benchmarks/mnist_loader.py --data_root ../shared/datasets            # 60,000 images, 3 repeats
"""

from __future__ import annotations

import argparse
import sys
import time
from itertools import islice
from pathlib import Path

import torch
import torchvision
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datamodules import MNISTDataModule  # noqa: E402

BATCH = 128


def seconds(loader: DataLoader, images: int) -> float:
    start = time.perf_counter()
    for _ in islice(loader, -(-images // BATCH)):
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_root", default=None, help="the folder holding MNIST/raw ($ODIN_PL_DATA or ./data)")
    parser.add_argument("--images", type=int, default=60_000, help="training images per pass")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    module = MNISTDataModule(data_root=args.data_root, batch_size=BATCH)
    module.setup("fit")
    ours = module.train_dataloader()
    theirs = DataLoader(torchvision.datasets.MNIST(str(module.data_root), train=True,
                                                   transform=torchvision.transforms.ToTensor()),
                        batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {"ours": [], "torchvision": []}
    for _ in range(args.repeats):
        times["ours"].append(seconds(ours, args.images))
        times["torchvision"].append(seconds(theirs, args.images))
    best = {name: min(values) for name, values in times.items()}
    print(f"MNIST training loader, {args.images} images at batch {BATCH}, 0 workers, 1 thread, "
          f"fastest of {args.repeats}; torch {torch.__version__}, torchvision {torchvision.__version__}")
    print("| loader | seconds | images/s |\n|---|---|---|")
    for name, value in best.items():
        print(f"| {name} | {value:.2f} | {args.images / value:,.0f} |")
    print(f"ratio ours / torchvision (time): {best['ours'] / best['torchvision']:.2f}")


if __name__ == "__main__":
    main()
