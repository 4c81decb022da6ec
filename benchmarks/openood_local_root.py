"""An OpenOOD v1.5 CIFAR-10 data root (OpenOOD's layout) built from the copies a machine has, for a real run of
``configs/evaluate/openood_cifar10.yaml`` where OpenOOD's own archives cannot be downloaded.

What it builds under ``--out`` (nothing is copied but the lists and MNIST's images):
- ``benchmark_imglist/cifar10/*.txt``: OpenOOD's lists as given (``--lists``).
- ``images_classic/cifar10/<split>/<class>/NNNN.png``: links to the JPEG copy's ``<split>/<class>/MMMM.jpg`` with
  MMMM = NNNN - 1 (OpenOOD numbers a class's images from 1, the copy from 0; the copy's order within a class is not
  the official one, so the ID val/test split has OpenOOD's sizes per class but not its exact images).
- ``images_classic/mnist/<train|test>/<label>_<index>.jpg``: MNIST image ``index`` of the idx file of that split,
  saved as a JPEG (PIL's default quality 75; OpenOOD's files are JPEGs of unknown quality). Every list line's
  label prefix is checked against the idx label at that index.
- ``stand_ins/tin_val`` (1,000 images) and ``stand_ins/tin_test`` (the other 9,000): links to Tiny ImageNet's *test*
  images, split by a seeded permutation. OpenOOD's val_tin and test_tin are TIN *validation* images without 20
  classes near CIFAR's; those are not on the machine, so these stand in (unfiltered) for the OOD validation set
  and as a near-OOD set of another name.

    python benchmarks/openood_local_root.py --data ../shared/datasets --out runs/openood_root
    python evaluate.py protocol --config configs/evaluate/openood_cifar10.yaml --ckpt CKPT \\
        --data_root runs/openood_root --openood.folders '{"val/tin_val": "runs/openood_root/stand_ins/tin_val",
        "near/tin_test": "runs/openood_root/stand_ins/tin_test"}'
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datamodules.mnist import read_idx  # noqa: E402

TIN_VAL_SIZE = 1_000
MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def link(path: Path, target: Path) -> None:
    """``path`` as a symbolic link to ``target`` (which must exist), replacing an older link."""
    if not target.is_file():
        raise SystemExit(f"{target} is missing: give --data the folder that holds cifar10-jpeg, MNIST and "
                         "tiny-imagenet-200")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    path.symlink_to(target.resolve())


def list_paths(list_file: Path) -> list[str]:
    return [line.split(" ", 1)[0] for line in list_file.read_text().splitlines() if line.strip()]


def cifar10_links(lists: Path, jpeg: Path, images: Path) -> int:
    """Links for every CIFAR-10 image of the train, val and test lists; returns their number."""
    count = 0
    for name in ("train_cifar10.txt", "val_cifar10.txt", "test_cifar10.txt"):
        for relpath in list_paths(lists / name):
            _, split, cls, file = relpath.split("/")
            link(images / relpath, jpeg / split / cls / f"{int(Path(file).stem) - 1:04d}.jpg")
            count += 1
    return count


def mnist_files(lists: Path, raw: Path, images: Path) -> int:
    """MNIST's listed images as JPEG files named as the list names them; returns their number."""
    splits = {split: (read_idx(raw / a), read_idx(raw / b)) for split, (a, b) in MNIST_FILES.items()}
    count = 0
    for relpath in list_paths(lists / "test_mnist.txt"):
        _, split, file = relpath.split("/")
        label, index = (int(part) for part in Path(file).stem.split("_"))
        pixels, labels = splits[split]
        if labels[index] != label:
            raise SystemExit(f"{relpath}: the list says label {label}, MNIST's {split} idx file {labels[index]}")
        path = images / relpath
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[index], mode="L").save(path, format="JPEG")
        count += 1
    return count


def tin_stand_ins(tin_test: Path, out: Path, seed: int) -> tuple[int, int]:
    """The TIN test images split by a seeded permutation into stand_ins/tin_val and stand_ins/tin_test."""
    paths = sorted(tin_test.glob("*.JPEG"))
    order = np.random.default_rng(seed).permutation(len(paths))
    for rank, index in enumerate(order):
        link(out / "stand_ins" / ("tin_val" if rank < TIN_VAL_SIZE else "tin_test") / paths[index].name,
             paths[index])
    return TIN_VAL_SIZE, len(paths) - TIN_VAL_SIZE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path,
                        help="folder with cifar10-jpeg/, MNIST/raw/, tiny-imagenet-200/, openood-v1.5-imglist/")
    parser.add_argument("--out", required=True, type=Path, help="the data root to build")
    parser.add_argument("--seed", type=int, default=0, help="seed of the TIN val/test split")
    args = parser.parse_args()
    source_lists = args.data / "openood-v1.5-imglist" / "cifar10"
    lists = args.out / "benchmark_imglist" / "cifar10"
    lists.mkdir(parents=True, exist_ok=True)
    for source in sorted(source_lists.glob("*.txt")):
        (lists / source.name).write_bytes(source.read_bytes())
    images = args.out / "images_classic"
    print(f"cifar10: {cifar10_links(lists, args.data / 'cifar10-jpeg', images)} links")
    print(f"mnist: {mnist_files(lists, args.data / 'MNIST' / 'raw', images)} images")
    val, test = tin_stand_ins(args.data / "tiny-imagenet-200" / "test" / "images", args.out, args.seed)
    print(f"tin stand-ins: {val} validation, {test} test images under {args.out / 'stand_ins'}")


if __name__ == "__main__":
    main()
