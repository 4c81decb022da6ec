"""The in-distribution DataModules and the download helpers on tiny files in the real on-disk formats."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import tarfile
import urllib.error
import urllib.request
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

from conftest import shared_dataset
from data_factories import CIFAR10_NAMES, idx_bytes, write_cifar10, write_cifar10_folder, write_cifar100, write_mnist
from datamodules import (CIFAR10DataModule, CIFAR80DataModule, CIFAR100DataModule, DatasetNotFoundError,
                         ImageFolderDataModule, MNISTDataModule, cifar80_split)
from datamodules import sampling
from datamodules.cifar import (CIFAR10, CIFAR10_MEAN, CIFAR10_STD, CIFAR100, CIFAR100_MEAN, cifar_class_names,
                               cifar100_test_images_of_classes, load_cifar)
from datamodules.download import (ChecksumError, RemoteDataset, Resource, UnsafeArchiveError, check_md5,
                                  download_url, extract_archive, require_files)
from datamodules.image_folder import SpecArrayDataset, load_image
from odin_pl.images import pil_to_spec_mode
from odin_pl.errors import UserError
from datamodules.mnist import read_idx
from odin_pl.spec import ImageSpec

RGB_SPEC = ImageSpec(size=3, channels=3, mean=(0,) * 3, std=(1,) * 3)


# ----------------------------------------------------------------------------- helpers

def _pixels(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Undo the normalization: back to [0, 1] pixels."""
    return x * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)


def _is_crop_flip(augmented: torch.Tensor, original: torch.Tensor, pad: int = 4) -> bool:
    """Whether ``augmented`` is a crop of the zero-padded ``original``, possibly flipped horizontally."""
    size = original.shape[-1]
    padded = F.pad(original, (pad,) * 4)
    crops = [padded[:, dy:dy + size, dx:dx + size] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
    return any(torch.allclose(augmented, c, atol=1e-5) or torch.allclose(augmented, c.flip(-1), atol=1e-5)
               for c in crops)


# ----------------------------------------------------------------------------- CIFAR

def test_cifar10_pickles_shapes_labels_normalization_and_train_only_augmentation(tmp_path):
    write_cifar10(tmp_path)
    dm = CIFAR10DataModule(data_root=str(tmp_path), batch_size=4)
    dm.setup("fit")
    spec = dm.image_spec
    assert (spec.size, spec.channels, spec.dataset) == (32, 3, "cifar10")
    assert list(spec.class_names) == CIFAR10_NAMES
    assert (spec.mean, spec.std) == (CIFAR10_MEAN, CIFAR10_STD)
    assert CIFAR10DataModule.default_ood_sets == ("tin_crop", "tin_resize", "lsun_crop", "lsun_resize", "isun",
                                                  "gaussian", "uniform")
    assert (len(dm.train_set), len(dm.test_set)) == (50, 20)
    assert dm.val_set is dm.test_set  # the paper's setting: monitor on the test set

    raw = pickle.loads((tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes())
    for i in (0, 13):
        x, y = dm.test_set[i]
        assert y == raw["labels"][i] and isinstance(y, int)
        expected = torch.from_numpy(raw["data"][i].reshape(3, 32, 32).astype(np.float32)) / 255
        assert torch.allclose(_pixels(x, spec.mean, spec.std), expected, atol=1e-5)
        assert torch.equal(x, dm.test_set[i][0])  # no augmentation on the test set

    torch.manual_seed(0)
    original = _pixels(dm.load_split(train=True, augment=False)[3][0], spec.mean, spec.std)
    draws = [_pixels(dm.train_set[3][0], spec.mean, spec.std) for _ in range(8)]
    assert all(_is_crop_flip(d, original) for d in draws)
    assert any(not torch.allclose(d, original) for d in draws)

    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_array_augmentation_is_a_function_of_the_sample_seed():
    """SpecArrayDataset.seeded_item against a numpy reference: seed s crops at (s mod 9, s // 9 mod 9) of the
    4-pixel zero-padded image and flips when s // 81 is odd, so 162 consecutive seeds give every crop and flip
    once (float32 pixels, 1e-6); the global generators are not touched."""
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    spec = ImageSpec(size=32, channels=3, mean=CIFAR10_MEAN, std=CIFAR10_STD, class_names=tuple(CIFAR10_NAMES))
    dataset = SpecArrayDataset(images, [4, 5, 6], spec, augment=True)
    state = torch.get_rng_state()
    seen = set()
    for seed in range(2**32 - 200, 2**32 - 38):
        x, label = dataset.seeded_item(1, seed)
        top, left, flip = seed % 9, seed // 9 % 9, seed // 81 % 2
        crop = np.pad(images[1], ((4, 4), (4, 4), (0, 0)))[top:top + 32, left:left + 32]
        crop = crop[:, ::-1] if flip else crop
        expected = (crop.transpose(2, 0, 1) / 255 - np.reshape(CIFAR10_MEAN, (3, 1, 1))) / np.reshape(CIFAR10_STD,
                                                                                                     (3, 1, 1))
        np.testing.assert_allclose(x.numpy(), expected, atol=1e-6)
        assert label == 5
        seen.add((top, left, flip))
    assert len(seen) == 162 and torch.equal(torch.get_rng_state(), state)
    plain = SpecArrayDataset(images, [4, 5, 6], spec)
    np.testing.assert_allclose(_pixels(plain[2][0], CIFAR10_MEAN, CIFAR10_STD).numpy(),
                               images[2].transpose(2, 0, 1) / 255, atol=1e-6)
    with pytest.raises(ValueError, match=r"do not match the spec's \(32, 32, 1\)"):
        SpecArrayDataset(images, [4, 5, 6], ImageSpec(size=32, channels=1, mean=(0.5,), std=(0.5,)))


def test_cifar10_val_split_is_seeded_and_unaugmented(tmp_path):
    write_cifar10(tmp_path)
    dm = CIFAR10DataModule(data_root=str(tmp_path), val_split=0.2, seed=3)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set)) == (40, 10)
    assert torch.equal(dm.val_set[0][0], dm.val_set[0][0])
    assert not set(dm.train_set.indices) & set(dm.val_set.indices)


def test_cifar10_class_folder_layout(tmp_path):
    write_cifar10_folder(tmp_path)
    dm = CIFAR10DataModule(data_root=str(tmp_path), image_folder="cifar10-jpeg")
    dm.setup("fit")
    spec = dm.image_spec
    assert list(spec.class_names) == CIFAR10_NAMES and spec.dataset == "cifar10" and spec.mean == CIFAR10_MEAN
    assert (len(dm.train_set), len(dm.test_set)) == (20, 10)
    assert [dm.test_set[i][1] for i in range(10)] == list(range(10))
    path = tmp_path / "cifar10-jpeg" / "test" / "bird" / "0000.png"
    expected = torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32)).permute(2, 0, 1) / 255
    assert torch.allclose(_pixels(dm.test_set[2][0], spec.mean, spec.std), expected, atol=1e-5)
    torch.manual_seed(1)
    original = _pixels(dm.load_split(train=True, augment=False)[0][0], spec.mean, spec.std)
    assert all(_is_crop_flip(_pixels(dm.train_set[0][0], spec.mean, spec.std), original) for _ in range(4))

    (tmp_path / "cifar10-jpeg" / "train" / "bird").rename(tmp_path / "cifar10-jpeg" / "train" / "zebra")
    (tmp_path / "cifar10-jpeg" / "train" / "extra").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "cifar10-jpeg" / "train" / "extra" / "0.png")
    with pytest.raises(ValueError, match="11 class folders"):
        CIFAR10DataModule(data_root=str(tmp_path), image_folder="cifar10-jpeg").setup("fit")


def test_cifar100_pickles(tmp_path):
    write_cifar100(tmp_path)
    dm = CIFAR100DataModule(data_root=str(tmp_path))
    dm.setup("test")
    spec = dm.image_spec
    assert spec.dataset == "cifar100" and spec.num_classes == 100 and spec.class_names[7] == "fine07"
    assert spec.mean == CIFAR100_MEAN
    assert len(dm.test_set) == 100 and dm.train_set is None
    x, y = dm.test_set[42]
    assert y == 42 and round(float(_pixels(x, spec.mean, spec.std)[0, 0, 0]) * 255) == 42


def test_cifar80_split_is_seeded_disjoint_and_covers_all_classes():
    in_classes, out_classes = cifar80_split()
    assert (in_classes, out_classes) == cifar80_split(0)
    assert len(in_classes) == 80 and len(out_classes) == 20
    assert in_classes == sorted(in_classes) and out_classes == sorted(out_classes)
    assert not set(in_classes) & set(out_classes) and set(in_classes) | set(out_classes) == set(range(100))
    # The documented default split: a change here changes every CIFAR-80 result.
    assert out_classes == [19, 37, 40, 42, 44, 53, 56, 63, 69, 71, 74, 76, 80, 81, 82, 85, 90, 91, 93, 95]
    assert cifar80_split(1) != cifar80_split(0)


def test_cifar80_remaps_labels_and_exposes_cifar20(tmp_path):
    write_cifar100(tmp_path)
    dm = CIFAR80DataModule(data_root=str(tmp_path), split_seed=5)
    dm.setup("fit")
    in_classes, out_classes = cifar80_split(5)
    assert (dm.in_classes, dm.out_classes) == (in_classes, out_classes)
    spec = dm.image_spec
    assert spec.dataset == "cifar80" and spec.class_names == tuple(f"fine{c:02d}" for c in in_classes)
    assert CIFAR80DataModule.default_ood_sets[-1] == "cifar20"
    assert (len(dm.train_set), len(dm.test_set)) == (160, 80)
    labels = [dm.test_set[i][1] for i in range(80)]
    assert sorted(labels) == list(range(80))
    for i in range(80):
        x, y = dm.test_set[i]
        assert in_classes[y] == round(float(_pixels(x, spec.mean, spec.std)[0, 0, 0]) * 255)

    cifar20 = cifar100_test_images_of_classes(tmp_path, out_classes)
    assert cifar20.shape == (20, 32, 32, 3) and cifar20.dtype == np.uint8
    assert sorted(cifar20[:, 0, 0, 0].tolist()) == out_classes

    with pytest.raises(ValueError, match="80 distinct"):
        CIFAR80DataModule(data_root=str(tmp_path), in_classes=list(range(79)))


# ----------------------------------------------------------------------------- MNIST

@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files(tmp_path, gz):
    data = write_mnist(tmp_path, gz)
    dm = MNISTDataModule(data_root=str(tmp_path), batch_size=5)
    dm.setup("fit")
    spec = dm.image_spec
    assert (spec.size, spec.channels, spec.mean, spec.std, spec.dataset) == (28, 1, (0.0,), (1.0,), "mnist")
    assert spec.class_names == tuple("0123456789")
    assert (len(dm.train_set), len(dm.test_set)) == (12, 6)
    for train, dataset in ((True, dm.train_set), (False, dm.test_set)):
        images, labels = data[train]
        for i in range(len(labels)):
            x, y = dataset[i]
            assert x.shape == (1, 28, 28) and y == labels[i]
            assert torch.allclose(x[0], torch.from_numpy(images[i].astype(np.float32)) / 255)  # [0, 1], as is
    assert torch.equal(dm.train_set[0][0], dm.train_set[0][0])  # no augmentation
    assert next(iter(dm.train_dataloader()))[0].shape == (5, 1, 28, 28)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_equals_torchvisions_mnist_and_its_idx_reader(tmp_path, gz, monkeypatch):
    """On generated idx files: ``read_idx`` gives torchvision's ``read_sn3_pascalvincent_tensor`` arrays (gzipped
    files unpacked for it), every sample equals torchvision's ``MNIST`` with ``ToTensor()`` exactly, and a training
    epoch yields each training image once with no per-sample seed drawn (nothing is augmented)."""
    write_mnist(tmp_path, gz)
    plain = tmp_path / "plain"
    (plain / "MNIST" / "raw").mkdir(parents=True)
    for path in (tmp_path / "MNIST" / "raw").iterdir():
        name = path.name.removesuffix(".gz")
        (plain / "MNIST" / "raw" / name).write_bytes(gzip.decompress(path.read_bytes()) if gz else path.read_bytes())
        np.testing.assert_array_equal(read_idx(path), read_sn3_pascalvincent_tensor(
            str(plain / "MNIST" / "raw" / name)).numpy())
    dm = MNISTDataModule(data_root=str(tmp_path), batch_size=4)
    dm.setup("fit")
    for train, ours in ((True, dm.train_set), (False, dm.test_set)):
        theirs = torchvision.datasets.MNIST(str(plain), train=train, transform=torchvision.transforms.ToTensor())
        assert len(ours) == len(theirs)
        for i in range(len(ours)):
            (x, y), (tx, ty) = ours[i], theirs[i]
            assert x.dtype == tx.dtype and torch.equal(x, tx) and y == ty
    monkeypatch.setattr(sampling, "sample_seed", lambda *a: pytest.fail("a per-sample seed was drawn"))
    images = torch.cat([x for x, _ in dm.train_dataloader()])
    expected = torch.stack([dm.train_set[i][0] for i in range(len(dm.train_set))])
    assert len(images) == len(expected) and sorted(map(bytes, images.numpy())) == sorted(map(bytes, expected.numpy()))


def test_cifar_pickles_read_as_torchvisions_cifar_reads_them(tmp_path, monkeypatch):
    """On generated pickles, ``load_cifar`` gives torchvision's ``CIFAR10``/``CIFAR100`` ``.data`` and ``.targets``
    (their md5 check of the official release turned off: it refuses generated files) and the same class names."""
    write_cifar10(tmp_path)
    write_cifar100(tmp_path)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: True)
    for fmt, tv in ((CIFAR10, torchvision.datasets.CIFAR10), (CIFAR100, torchvision.datasets.CIFAR100)):
        for train in (True, False):
            images, labels = load_cifar(tmp_path, fmt, train)
            theirs = tv(str(tmp_path), train=train)
            np.testing.assert_array_equal(images, theirs.data)
            np.testing.assert_array_equal(labels, np.asarray(theirs.targets, dtype=np.int64))
            assert labels.dtype == np.int64 and images.dtype == np.uint8
        assert list(cifar_class_names(tmp_path, fmt)) == theirs.classes


def test_read_idx_rejects_truncated_and_foreign_files(tmp_path):
    good = idx_bytes(np.zeros((3, 4, 4), dtype=np.uint8))
    (tmp_path / "short").write_bytes(good[:-5])
    (tmp_path / "png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short")
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(tmp_path / "png")


# ----------------------------------------------------------------------------- ImageFolder

def _write_folder(root: Path) -> None:
    """train/{gray,rgba,palette} with mixed sizes and modes plus a corrupt file; test/ with two classes."""
    rng = np.random.default_rng(5)

    def save(path: Path, mode: str, size: tuple[int, int]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        image = rgb.convert("P", palette=Image.Palette.ADAPTIVE) if mode == "P" else rgb.convert(mode)
        image.save(path)

    for i in range(3):
        save(root / "train" / "gray" / f"{i}.png", "L", (20, 24))
        save(root / "train" / "rgba" / f"{i}.png", "RGBA", (16, 16))
        save(root / "train" / "palette" / f"{i}.png", "P", (16, 12))
    (root / "train" / "rgba" / "broken.png").write_bytes(b"this is not a png")
    (root / "train" / "rgba" / "notes.txt").write_text("not an image: ignored")
    save(root / "test" / "gray" / "0.png", "L", (16, 16))
    save(root / "test" / "rgba" / "0.jpg", "RGB", (16, 16))


def test_image_folder_modes_sizes_stats_and_corrupt_file(tmp_path):
    _write_folder(tmp_path)
    dm = ImageFolderDataModule(data_root=str(tmp_path), image_size=8, batch_size=3)
    with pytest.warns(UserWarning, match=r"skipped 1 image file\(s\) under .* that cannot be decoded") as record:
        spec = dm.image_spec
    assert len([w for w in record if "cannot be decoded" in str(w.message)]) == 1
    assert [str(w.message).split(" (first")[0] for w in record if "without an image extension" in str(w.message)
            ] == [f"skipped 1 file(s) under {tmp_path / 'train'} without an image extension (.jpg, .jpeg, .png, .ppm, "
                  ".bmp, .pgm, .tif, .tiff, .webp, .gif)"]  # notes.txt: said, not silently dropped
    assert spec.class_names == ("gray", "palette", "rgba") and (spec.size, spec.channels) == (8, 3)
    assert spec.dataset == tmp_path.name
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm.setup("fit")  # the folders are scanned once: no second warning
    assert (len(dm.train_set), len(dm.test_set)) == (9, 2)
    assert [dm.test_set[i][1] for i in range(2)] == [0, 2]  # test labels follow the training classes

    plain = torch.stack([x for x, _ in dm.load_split(train=True, augment=False)])
    assert plain.shape == (9, 3, 8, 8)
    # The statistics are those of these training pixels, so the normalized training set has mean 0 and std 1.
    assert torch.allclose(plain.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(plain.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    assert dm.hparams.mean == list(spec.mean) and dm.hparams.std == list(spec.std)
    assert next(iter(dm.train_dataloader()))[0].shape == (3, 3, 8, 8)

    gray = ImageFolderDataModule(data_root=str(tmp_path), image_size=8, channels=1, mean=[0.5], std=[0.25])
    with pytest.warns(UserWarning, match="cannot be decoded"):
        gray.setup("test")
    x, _ = gray.test_set[1]
    assert x.shape == (1, 8, 8) and gray.image_spec.mean == (0.5,)


def _decoded(path: Path) -> np.ndarray:
    return np.asarray(load_image(path))


def test_every_pil_mode_decodes_by_its_documented_rule(tmp_path):
    """Each PIL mode against a numpy reference of the rule in ``odin_pl.images.standard_mode`` (exact: the
    rule rounds to nearest). Before issue 29, 16-bit images (I;16 PNG and TIFF, I) were divided by their own
    maximum (a dark 16-bit image came out at full brightness) and CMYK went through Pillow's clipping."""
    rng = np.random.default_rng(0)
    sixteen = np.array([[0, 1, 128, 129], [257, 1000, 32767, 40000]], dtype=np.uint16)
    for suffix in (".png", ".tif"):
        Image.fromarray(sixteen).save(tmp_path / f"i16{suffix}")
        assert Image.open(tmp_path / f"i16{suffix}").mode.startswith("I;16")
        assert np.array_equal(_decoded(tmp_path / f"i16{suffix}"), np.rint(sixteen / 257.0).astype(np.uint8))
    Image.fromarray(sixteen.astype(np.int32)).save(tmp_path / "i32.tif")
    assert Image.open(tmp_path / "i32.tif").mode == "I"
    assert np.array_equal(_decoded(tmp_path / "i32.tif"), np.rint(sixteen / 257.0).astype(np.uint8))
    Image.fromarray(np.array([[70000, 5]], dtype=np.int32)).save(tmp_path / "i32_big.tif")
    with pytest.raises(UserError, match=r"image .*i32_big.tif: a 32-bit integer image with values in \[5, 70000\]"):
        load_image(tmp_path / "i32_big.tif")

    floats = rng.uniform(0, 1, (4, 5)).astype(np.float32)
    Image.fromarray(floats).save(tmp_path / "f.tif")
    assert np.array_equal(_decoded(tmp_path / "f.tif"), np.rint(floats.astype(np.float64) * 255).astype(np.uint8))
    Image.fromarray(floats * 255).save(tmp_path / "f255.tif")
    with pytest.raises(UserError, match=r"f255.tif: a floating-point image must hold finite intensities in \[0, 1\]"):
        load_image(tmp_path / "f255.tif")

    cmyk = rng.integers(0, 256, (3, 4, 4), dtype=np.uint8)
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "cmyk.tif")
    c = cmyk.astype(np.float64)
    assert np.array_equal(_decoded(tmp_path / "cmyk.tif"), np.rint((255 - c[..., :3]) * (255 - c[..., 3:]) / 255))

    rgba = rng.integers(0, 256, (3, 4, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    x = rgba.astype(np.float64)
    assert np.array_equal(_decoded(tmp_path / "rgba.png"), np.rint(x[..., :3] * x[..., 3:] / 255))
    la = rgba[..., [0, 3]]
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    decoded = _decoded(tmp_path / "la.png")
    assert decoded.shape == (3, 4) and np.array_equal(decoded, np.rint(x[..., 0] * x[..., 3] / 255))

    palette = rng.integers(0, 256, (4, 3), dtype=np.uint8)
    indices = rng.integers(0, 4, (5, 6), dtype=np.uint8)
    image = Image.fromarray(indices, "P")
    image.putpalette(palette.flatten().tolist())
    image.save(tmp_path / "p.png")
    assert np.array_equal(_decoded(tmp_path / "p.png"), palette[indices])
    image.save(tmp_path / "p_alpha.png", transparency=bytes([255, 0, 128, 255]))
    alpha = np.array([255, 0, 128, 255], dtype=np.float64)[indices][..., None]
    assert np.array_equal(_decoded(tmp_path / "p_alpha.png"), np.rint(palette[indices] * alpha / 255))

    bits = rng.integers(0, 2, (4, 8)).astype(bool)
    Image.fromarray(bits).save(tmp_path / "one.png")
    assert np.array_equal(_decoded(tmp_path / "one.png"), bits * 255)
    # Then to the spec's channels: gray is copied to RGB; RGB to gray by the ITU-R 601-2 luma.
    rgb = rng.integers(0, 256, (2, 3, 3), dtype=np.uint8)
    gray = np.asarray(pil_to_spec_mode(Image.fromarray(rgb), ImageSpec(size=3, channels=1, mean=(0,), std=(1,))))
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    assert np.abs(gray - (299 * r + 587 * g + 114 * b) / 1000).max() <= 0.5 + 1e-9
    assert np.array_equal(np.asarray(pil_to_spec_mode(Image.fromarray(rgb[..., 0]), RGB_SPEC)), rgb[..., [0, 0, 0]])


def test_exif_orientation_is_applied_as_a_viewer_does(tmp_path):
    """Before issue 29 the stored pixels were read as they lie, ignoring the EXIF orientation (6: turn 90 degrees
    clockwise to view)."""
    pixels = np.random.default_rng(1).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "turned.png", exif=exif)
    assert np.array_equal(_decoded(tmp_path / "turned.png"), np.rot90(pixels, k=-1))


def test_image_folder_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataModule(data_root=str(tmp_path)).setup("fit")
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no images found"):
        ImageFolderDataModule(data_root=str(tmp_path)).setup("fit")
    Image.new("RGB", (4, 4)).save(tmp_path / "train" / "a" / "0.png")
    (tmp_path / "test" / "b").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "test" / "b" / "0.png")
    with pytest.raises(ValueError, match=r"class folders \['b'\]"):
        ImageFolderDataModule(data_root=str(tmp_path), image_size=4).setup("test")
    with pytest.raises(ValueError, match="both mean and std"):
        ImageFolderDataModule(data_root=str(tmp_path), mean=[0.5, 0.5, 0.5])


# ----------------------------------------------------------------------------- hparams rebuild

def test_save_hyperparameters_rebuilds_the_same_spec_and_split(tmp_path):
    write_cifar10(tmp_path)
    write_cifar100(tmp_path)
    write_mnist(tmp_path, gz=True)
    _write_folder(tmp_path / "folder")
    modules = [CIFAR10DataModule(data_root=str(tmp_path), batch_size=7),
               CIFAR100DataModule(data_root=str(tmp_path), val_split=0.1, seed=2),
               CIFAR80DataModule(data_root=str(tmp_path), split_seed=9),
               MNISTDataModule(data_root=str(tmp_path)),
               ImageFolderDataModule(data_root=str(tmp_path / "folder"), image_size=8)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the folder's corrupt file
        for dm in modules:
            spec = dm.image_spec
            rebuilt = type(dm)(**dm.hparams)
            assert rebuilt.image_spec == spec
            assert (rebuilt.batch_size, rebuilt.val_split, rebuilt.seed) == (dm.batch_size, dm.val_split, dm.seed)
    cifar80 = modules[2]
    assert cifar80.hparams.in_classes == cifar80_split(9)[0] and cifar80.hparams.split_seed == 9
    assert type(cifar80)(**cifar80.hparams).out_classes == cifar80_split(9)[1]
    folder = modules[4]
    assert folder.hparams.mean == list(folder.image_spec.mean)  # computed statistics are recorded


# ----------------------------------------------------------------------------- download, checksum, extraction

def _offline(monkeypatch) -> list[str]:
    """Make every urlopen fail as on a machine without internet; returns the URLs that were tried."""
    tried: list[str] = []

    def urlopen(request, *args, **kwargs):
        tried.append(request.full_url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return tried


def test_missing_data_raises_a_clear_error(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        CIFAR100DataModule(data_root=str(tmp_path)).setup("test")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz" in message
    assert str(tmp_path / "cifar-100-python") in message
    assert "--data_root" in message and "ODIN_PL_DATA" in message and "download failed" not in message


def test_download_offline_raises_the_clear_error(tmp_path, monkeypatch):
    tried = _offline(monkeypatch)
    with pytest.raises(DatasetNotFoundError) as info:
        CIFAR10DataModule(data_root=str(tmp_path), download=True).prepare_data()
    message = str(info.value)
    assert tried == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
    assert tried[0] in message and "c58f30108f718f92721af3b95e74349a" in message
    assert str(tmp_path / "cifar-10-batches-py") in message and "download failed" in message
    assert "--data_root" in message and "ODIN_PL_DATA" in message
    assert isinstance(info.value.__cause__, urllib.error.URLError)
    assert list(tmp_path.iterdir()) == []  # no partial download left behind

    tried.clear()
    with pytest.raises(DatasetNotFoundError, match="MNIST not found") as info:
        MNISTDataModule(data_root=str(tmp_path), download=True).setup("test")
    assert len(tried) == 2 and all(url.endswith("train-images-idx3-ubyte.gz") for url in tried)  # both mirrors
    assert str(tmp_path / "MNIST" / "raw") in str(info.value)


def test_md5_mismatch_names_the_file_and_both_md5s(tmp_path, monkeypatch):
    path = tmp_path / "cifar-10-python.tar.gz"
    path.write_bytes(b"not the real archive")
    actual = hashlib.md5(b"not the real archive").hexdigest()
    check_md5(path, actual)
    with pytest.raises(ChecksumError) as info:
        check_md5(path, "0" * 32)
    assert str(path) in str(info.value) and actual in str(info.value) and "0" * 32 in str(info.value)

    # A corrupt archive already in the data root is reported, not silently replaced.
    tried = _offline(monkeypatch)
    with pytest.raises(ChecksumError, match="c58f30108f718f92721af3b95e74349a"):
        CIFAR10DataModule(data_root=str(tmp_path), download=True).prepare_data()
    assert tried == []

    # A download whose md5 differs leaves nothing behind.
    monkeypatch.setattr(urllib.request, "urlopen", lambda request, timeout: io.BytesIO(b"payload"))
    with pytest.raises(ChecksumError, match=hashlib.md5(b"payload").hexdigest()):
        download_url("https://example.org/file.bin", tmp_path / "dl" / "file.bin", md5="1" * 32)
    assert list((tmp_path / "dl").iterdir()) == []
    dest = download_url("https://example.org/file.bin", tmp_path / "dl" / "file.bin",
                        md5=hashlib.md5(b"payload").hexdigest())
    assert dest.read_bytes() == b"payload"


def test_download_then_extract_end_to_end_with_a_fake_server(tmp_path, monkeypatch):
    write_cifar10(tmp_path / "server")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "server" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    payload = archive.read_bytes()
    monkeypatch.setattr(urllib.request, "urlopen", lambda request, timeout: io.BytesIO(payload))
    source = RemoteDataset("tiny CIFAR-10", "cifar-10-batches-py", require_files("test_batch", "batches.meta"),
                           (Resource("tiny.tar.gz", hashlib.md5(payload).hexdigest(), ("https://example.org/t",)),))
    root = tmp_path / "root"
    assert source.ensure(root, download=True) == root / "cifar-10-batches-py"
    assert (root / "cifar-10-batches-py" / "data_batch_5").is_file() and (root / "tiny.tar.gz").is_file()


def _tar(path: Path, *members: tuple[str, str, str | None]) -> Path:
    """A tar(.gz) archive of (name, kind, link target) members: kind is "file", "sym" or "hard"."""
    with tarfile.open(path, "w:gz" if path.name.endswith("gz") else "w") as tar:
        for name, kind, target in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = 4
                tar.addfile(info, io.BytesIO(b"data"))
            else:
                info.type = tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE
                info.linkname = target
                tar.addfile(info)
    return path


def test_extract_archive_formats_and_inside_links(tmp_path):
    for name in ("a.tar.gz", "a.tgz", "a.tar"):
        archive = _tar(tmp_path / name, ("d/file", "file", None), ("d/link", "sym", "file"),
                       ("d/hard", "hard", "d/file"))
        out = extract_archive(archive, tmp_path / f"out-{name}")
        assert (out / "d" / "link").read_bytes() == b"data" and (out / "d" / "hard").read_bytes() == b"data"
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as archive:
        archive.writestr("d/file.txt", "zip")
    assert (extract_archive(tmp_path / "a.zip", tmp_path / "zip") / "d" / "file.txt").read_text() == "zip"
    with pytest.raises(ValueError, match="supported archives"):
        extract_archive(tmp_path / "a.rar", tmp_path / "rar")


@pytest.mark.parametrize("members, why", [
    ([("../evil", "file", None)], "would be written"),
    ([("ok/../../evil", "file", None)], "would be written"),
    ([("/tmp/odin_pl_evil_absolute", "file", None)], "absolute path"),
    ([("link", "sym", "../outside")], "links to"),
    ([("link", "sym", "/etc/passwd")], "absolute path"),
    ([("hard", "hard", "../outside")], "links to"),
    ([("here", "sym", "."), ("here/../evil", "file", None)], "would be written"),  # escape through a link
])
def test_extract_archive_refuses_members_escaping_the_destination(tmp_path, members, why):
    archive = _tar(tmp_path / "evil.tar.gz", *members)
    dest = tmp_path / "a" / "dest"
    with pytest.raises(UnsafeArchiveError, match=why):
        extract_archive(archive, dest)
    assert not (tmp_path / "a" / "evil").exists() and not (tmp_path / "a" / "outside").exists()
    assert not Path("/tmp/odin_pl_evil_absolute").exists()


@pytest.mark.parametrize("name, why", [("../evil.txt", "would be written"), ("/evil.txt", "absolute path")])
def test_extract_zip_refuses_members_escaping_the_destination(tmp_path, name, why):
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as archive:
        archive.writestr(zipfile.ZipInfo(name), "evil")
    with pytest.raises(UnsafeArchiveError, match=why):
        extract_archive(tmp_path / "evil.zip", tmp_path / "dest")
    assert not (tmp_path / "evil.txt").exists()


# ----------------------------------------------------------------------------- real data (not in the default run)

@pytest.mark.real_data
def test_real_cifar10_jpeg_and_mnist():
    jpeg = shared_dataset("cifar10-jpeg")
    cifar = CIFAR10DataModule(data_root=str(jpeg.parent), image_folder=jpeg.name)
    cifar.setup("test")
    assert list(cifar.image_spec.class_names) == CIFAR10_NAMES and len(cifar.test_set) == 10_000
    sample = [cifar.test_set[i] for i in range(0, 10_000, 20)]  # 50 images of each class
    x = torch.stack([image for image, _ in sample])
    assert x.shape == (500, 3, 32, 32) and sorted({label for _, label in sample}) == list(range(10))
    mean = _pixels(x.mean(0), CIFAR10_MEAN, CIFAR10_STD).mean((1, 2))
    assert torch.allclose(mean, torch.tensor(CIFAR10_MEAN), atol=0.03)

    shared_dataset("MNIST/raw")
    mnist = MNISTDataModule(data_root=str(jpeg.parent))
    mnist.setup("fit")
    assert (len(mnist.train_set), len(mnist.test_set)) == (60_000, 10_000)
    x, y = mnist.test_set[0]
    assert x.shape == (1, 28, 28) and float(x.min()) == 0.0 and float(x.max()) == 1.0 and y == 7
