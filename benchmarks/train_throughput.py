"""Training throughput of train.py's Lightning loop against a plain PyTorch loop (DenseNet-BC-100, 32x32 inputs).

Both loops train an ``ImageClassifier`` with the recipe of ``configs/model/densenet_bc_100.yaml`` (without the
learning-rate schedule), from the same initial weights, with the same SGD optimizer, on the same batches of one
DataLoader over the same random tensors, for the same number of steps. The Lightning side is ``Trainer.fit`` as
train.py runs it, with the progress bar, logger, checkpointing and validation off; the plain side is the usual
forward / loss / zero_grad / backward / step loop. Each loop is timed from the end of its last warm-up step to the
end of its last step (data loading included), in rounds that alternate the two loops; the best round of each is
reported.

    python benchmarks/train_throughput.py                      # CPU defaults: a few minutes on 1 thread
    python benchmarks/train_throughput.py --device cuda --batch_size 64 --steps 200 --warmup 20
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datamodules.cifar import CIFAR10_MEAN, CIFAR10_STD  # noqa: E402
from odin_pl.training.module import ImageClassifier  # noqa: E402
from odin_pl.spec import ImageSpec  # noqa: E402

RECIPE = ROOT / "configs" / "model" / "densenet_bc_100.yaml"


@dataclass(frozen=True)
class Setup:
    device: torch.device
    batch_size: int
    steps: int
    warmup: int

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class StepTimer(Callback):
    """Seconds from the end of the last warm-up batch to the end of the last batch."""

    def __init__(self, setup: Setup) -> None:
        self.setup_, self.start, self.seconds = setup, 0.0, 0.0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if batch_idx == self.setup_.warmup - 1:
            self.setup_.synchronize()
            self.start = time.perf_counter()
        elif batch_idx == self.setup_.warmup + self.setup_.steps - 1:
            self.setup_.synchronize()
            self.seconds = time.perf_counter() - self.start


def lightning_loop(model: ImageClassifier, loader: DataLoader, setup: Setup) -> float:
    timer = StepTimer(setup)
    trainer = pl.Trainer(accelerator="gpu" if setup.device.type == "cuda" else "cpu", devices=1,
                         max_steps=setup.warmup + setup.steps, max_epochs=1, precision="32-true", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0, callbacks=[timer])
    trainer.fit(model, train_dataloaders=loader)
    return timer.seconds


def plain_loop(model: ImageClassifier, loader: DataLoader, setup: Setup) -> float:
    hp = model.hparams
    model.to(setup.device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov,
                                weight_decay=hp.weight_decay)
    start = 0.0
    for step, (x, y) in enumerate(loader):
        x, y = x.to(setup.device, non_blocking=True), y.to(setup.device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step == setup.warmup - 1:
            setup.synchronize()
            start = time.perf_counter()
    setup.synchronize()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=25, help="timed steps per loop and round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best of each loop counts")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads, 0 for torch's default (1 keeps timings stable on a shared machine)")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1 or args.rounds < 1:
        parser.error("--warmup, --steps and --rounds must be at least 1")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    setup = Setup(torch.device(args.device), args.batch_size, args.steps, args.warmup)

    pl.seed_everything(0, verbose=False)
    n = (setup.warmup + setup.steps) * setup.batch_size
    data = TensorDataset(torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,)))
    loader = DataLoader(data, batch_size=setup.batch_size, shuffle=False, drop_last=True,
                        pin_memory=setup.device.type == "cuda")
    spec = ImageSpec(32, 3, CIFAR10_MEAN, CIFAR10_STD, tuple(str(i) for i in range(10)), "cifar10")
    recipe = {**yaml.safe_load(RECIPE.read_text())["model"], "lr_milestones": []}
    initial = ImageClassifier(**recipe, image_spec=spec.to_dict())
    loops: dict[str, Callable[[ImageClassifier, DataLoader, Setup], float]] = {
        "plain PyTorch": plain_loop, "Lightning (train.py)": lightning_loop}
    seconds: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(args.rounds):
        for name, loop in loops.items():
            seconds[name].append(loop(copy.deepcopy(initial), loader, setup))

    device = torch.cuda.get_device_name(setup.device) if setup.device.type == "cuda" else \
        f"{platform.processor() or platform.machine()} CPU, torch threads: {torch.get_num_threads()}"
    images = setup.steps * setup.batch_size
    print(f"DenseNet-BC-100 ({sum(p.numel() for p in initial.parameters()) / 1e6:.2f}M parameters), 32x32, "
          f"float32, batch {setup.batch_size}, on {device}; torch {torch.__version__}, lightning {pl.__version__}")
    print(f"{setup.warmup} warm-up + {setup.steps} timed steps ({images} images) per loop and round, "
          f"best of {args.rounds} rounds\n")
    print("| loop | images/s | ms/step | images/s in each round |\n|---|---:|---:|---|")
    throughput = {}
    for name, times in seconds.items():
        best = min(times)
        throughput[name] = images / best
        rounds = ", ".join(f"{images / t:.1f}" for t in times)
        print(f"| {name} | {throughput[name]:.1f} | {1000 * best / setup.steps:.1f} | {rounds} |")
    ratio = throughput["Lightning (train.py)"] / throughput["plain PyTorch"]
    print(f"\nratio Lightning / plain: {ratio:.3f} (goal >= 0.95)")
    return {**throughput, "ratio": ratio}


if __name__ == "__main__":
    main()
