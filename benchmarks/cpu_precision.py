"""What one training step costs on this CPU in float32 and in bfloat16 autocast, with and without channels_last.

The network and batch are those of ``configs/experiment/resnet9_cifar10_jpeg.yaml`` (the half-width ResNet-9 on
32x32 RGB images, batch 512, random inputs). A step is forward, cross-entropy and backward
(``odin_pl.training.precision.step_seconds``, which ``trainer.precision: auto`` measures too); the fastest of
``--repeats`` steps after one warm-up step is reported, and what ``precision: auto`` would choose on this CPU.

    python benchmarks/cpu_precision.py                     # batch 512, 2 repeats: about 2 minutes without bf16
    python benchmarks/cpu_precision.py --batch_size 64 --repeats 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datamodules.cifar import CIFAR10_MEAN, CIFAR10_STD  # noqa: E402
from odin_pl.spec import ImageSpec  # noqa: E402
from odin_pl.training.module import ImageClassifier  # noqa: E402
from odin_pl.training.precision import cpu_info, step_seconds  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet9_half")
    parser.add_argument("--batch_size", type=int, default=512, help="images per step")
    parser.add_argument("--repeats", type=int, default=2, help="timed steps per variant (the fastest is reported)")
    args = parser.parse_args()
    cpu = cpu_info()
    spec = ImageSpec(32, 3, CIFAR10_MEAN, CIFAR10_STD, tuple(str(c) for c in range(10)))
    generator = torch.Generator().manual_seed(0)
    x = torch.rand((args.batch_size, 3, 32, 32), generator=generator)
    y = torch.randint(10, (args.batch_size,), generator=generator)
    print(f"CPU: {cpu.model}; {torch.get_num_threads()} thread(s); vector units: {cpu.vector_units}; "
          f"native bfloat16: {' '.join(cpu.native_bf16) or 'no'}; torch {torch.__version__}")
    print(f"{args.backbone}, one training step (forward + backward) of {args.batch_size} images, "
          f"fastest of {args.repeats} after a warm-up\n")
    print("| precision | memory format | seconds per step | relative to float32 |\n|---|---|---|---|")
    base = None
    for precision in ("32-true", "bf16-mixed"):
        for channels_last in (False, True):
            torch.manual_seed(0)
            model = ImageClassifier(args.backbone, image_spec=spec.to_dict(), channels_last=channels_last)
            seconds = step_seconds(model, x, y, precision, args.repeats)
            base = base or seconds
            layout = "channels_last" if channels_last else "contiguous"
            print(f"| {precision} | {layout} | {seconds:.2f} | {seconds / base:.2f} |", flush=True)


if __name__ == "__main__":
    main()
