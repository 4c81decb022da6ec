"""The paper's named OOD sets and folder OOD sets, on tiny files written in each set's real on-disk format."""

from __future__ import annotations

import dataclasses
import io
import os
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torchvision.datasets.utils import calculate_md5 as file_md5
from torchvision.transforms import functional as TF

from conftest import shared_dataset
from data_factories import CIFAR10_NAMES, write_cifar10, write_cifar100
from datamodules import DatasetNotFoundError, OODDataModule, available_ood_sets, build_ood_dataset, ood_set_name
from datamodules import ood_sets
from datamodules.cifar import CIFAR10_MEAN, CIFAR10_STD, cifar80_split
from datamodules.download import ChecksumError, UnsafeArchiveError
from datamodules.image_folder import load_image
from datamodules.ood import find_images
from datamodules.ood_natural import ODIN_FOLDER, PAPER_ARCHIVES, TINY_IMAGENET_TEST_IMAGES
from datamodules.suite import build_ood_suite
from odin_pl.errors import UserError
from odin_pl.spec import ImageSpec

CIFAR_SPEC = ImageSpec(size=32, channels=3, mean=CIFAR10_MEAN, std=CIFAR10_STD)
MNIST_SPEC = ImageSpec(size=28, channels=1, mean=(0.0,), std=(1.0,))
RAW_RGB = ImageSpec(size=32, channels=3, mean=(0.0,) * 3, std=(1.0,) * 3)  # [0, 1] pixels, no normalization
PAPER_NAMES = sorted(PAPER_ARCHIVES)


# ----------------------------------------------------------------------------- writers and checks

def _noise_image(size: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    channels = {"RGB": 3, "L": 1}[mode]
    array = np.random.default_rng(seed).integers(0, 256, size=(size, size, channels), dtype=np.uint8)
    return Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode)


def _write_images(folder: Path, count: int, size: int = 32, suffix: str = ".jpg") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"img_{i}{suffix}" for i in range(count)]
    for i, path in enumerate(paths):
        _noise_image(size, "L" if i == 1 else "RGB", seed=i).save(path)
    return paths


def _tar_gz(path: Path, source: Path) -> Path:
    """A .tar.gz of everything under ``source``, with member names relative to it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for child in sorted(source.iterdir()):
            tar.add(child, arcname=child.name)
    return path


def _paper_archive(tmp_path: Path, name: str, count: int = 3) -> Path:
    """The released archive of ``name`` with ``count`` 32x32 JPEGs, saved where the user would put it."""
    archive = PAPER_ARCHIVES[name]
    _write_images(tmp_path / "staging" / Path(archive.folder).relative_to(ODIN_FOLDER), count)
    return _tar_gz(tmp_path / "root" / ODIN_FOLDER / archive.resources[0].filename, tmp_path / "staging")


def _patch_archive(monkeypatch, name: str, **changes) -> None:
    """Replace fields of the archive's resource (the md5 of a generated archive, a file:// URL)."""
    archive = PAPER_ARCHIVES[name]
    resource = dataclasses.replace(archive.resources[0], **changes)
    monkeypatch.setitem(PAPER_ARCHIVES, name, dataclasses.replace(archive, resources=(resource,)))


def _pixels(x: torch.Tensor, spec: ImageSpec) -> torch.Tensor:
    return x * torch.tensor(spec.std).view(-1, 1, 1) + torch.tensor(spec.mean).view(-1, 1, 1)


def _check(dataset, spec: ImageSpec, count: int) -> None:
    """``count`` images of the spec's shape, label -1, normalized with the spec (pixels back in [0, 1])."""
    assert len(dataset) == count
    for index in range(count):
        x, label = dataset[index]
        assert label == -1 and x.dtype == torch.float32
        assert x.shape == (spec.channels, spec.size, spec.size)
        pixels = _pixels(x, spec)
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def _write_tiny_imagenet(root: Path, count: int = 4) -> list[Path]:
    """Tiny ImageNet test images test_N.JPEG, 64x64, the second one grayscale (as about 2% of the real ones)."""
    folder = root / TINY_IMAGENET_TEST_IMAGES
    folder.mkdir(parents=True)
    paths = [folder / f"test_{i}.JPEG" for i in range(count)]
    for i, path in enumerate(paths):
        _noise_image(64, "L" if i == 1 else "RGB", seed=10 + i).save(path)
    assert Image.open(paths[1]).mode == "L"
    return paths


# ----------------------------------------------------------------------------- the paper's released archives

@pytest.mark.parametrize("name", PAPER_NAMES)
def test_released_archive_is_checked_extracted_and_converted(tmp_path, monkeypatch, name):
    path = _paper_archive(tmp_path, name)
    _patch_archive(monkeypatch, name, md5=file_md5(path))
    root = tmp_path / "root"
    with pytest.raises(DatasetNotFoundError):  # saved but not extracted, and no download asked for
        build_ood_dataset(name, CIFAR_SPEC, root)
    _check(build_ood_dataset(name, CIFAR_SPEC, root, download=True), CIFAR_SPEC, 3)
    assert (root / PAPER_ARCHIVES[name].folder / "img_0.jpg").is_file()
    _check(build_ood_dataset(name, MNIST_SPEC, root), MNIST_SPEC, 3)  # read from the extracted folder
    _check(build_ood_dataset(name, CIFAR_SPEC, root, num_images=2), CIFAR_SPEC, 2)


def test_released_archive_downloaded_from_its_url(tmp_path, monkeypatch):
    path = _paper_archive(tmp_path, "isun", count=2)
    served = path.rename(tmp_path / "served.tar.gz")
    _patch_archive(monkeypatch, "isun", md5=file_md5(served), urls=(served.as_uri(),))
    root = tmp_path / "root"
    _check(build_ood_dataset("isun", CIFAR_SPEC, root, download=True), CIFAR_SPEC, 2)
    assert (root / ODIN_FOLDER / "iSUN.tar.gz").is_file() and (root / ODIN_FOLDER / "iSUN" / "iSUN_patches").is_dir()


def test_checksum_mismatch_raises_the_clear_error(tmp_path):
    path = _paper_archive(tmp_path, "lsun_crop")
    with pytest.raises(ChecksumError, match="checksum mismatch") as info:
        build_ood_dataset("lsun_crop", CIFAR_SPEC, tmp_path / "root", download=True)
    assert str(path) in str(info.value) and PAPER_ARCHIVES["lsun_crop"].resources[0].md5 in str(info.value)
    assert not (tmp_path / "root" / ODIN_FOLDER / "LSUN").exists()


def test_archive_escaping_its_folder_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "root" / ODIN_FOLDER / "LSUN_resize.tar.gz"
    path.parent.mkdir(parents=True)
    payload = io.BytesIO()
    _noise_image(32).save(payload, "JPEG")
    with tarfile.open(path, "w:gz") as tar:
        for member in ("LSUN_resize/LSUN_resize/ok.jpg", "../evil.jpg"):
            info = tarfile.TarInfo(member)
            info.size = len(payload.getvalue())
            tar.addfile(info, io.BytesIO(payload.getvalue()))
    _patch_archive(monkeypatch, "lsun_resize", md5=file_md5(path))
    with pytest.raises(UnsafeArchiveError, match="evil"):
        build_ood_dataset("lsun_resize", CIFAR_SPEC, tmp_path / "root", download=True)
    assert not (tmp_path / "root" / "evil.jpg").exists()


def _expected_in_message(name: str, root: Path) -> list[str]:
    if name in PAPER_ARCHIVES:
        archive = PAPER_ARCHIVES[name]
        return [archive.resources[0].urls[0], str(root / archive.folder), archive.resources[0].md5]
    return {"cifar20": ["https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", str(root / "cifar-100-python")],
            "cifar10bw": ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", str(root / "cifar-10-batches-py"),
                          str(root / "cifar10-jpeg" / "test")],
            "omniglot": [ood_sets.OMNIGLOT.resources[0].urls[0], str(root / "omniglot-py" / "images_evaluation")],
            "notmnist": ["http://yaroslavvb.com/upload/notMNIST/notMNIST_small.tar.gz", str(root / "notMNIST_small"),
                         "no published md5"]}[name]


@pytest.mark.parametrize("name", PAPER_NAMES + ["cifar20", "cifar10bw", "omniglot", "notmnist"])
def test_absent_data_raise_what_to_download_and_where(tmp_path, name):
    with pytest.raises(DatasetNotFoundError) as info:
        build_ood_dataset(name, MNIST_SPEC, tmp_path)
    assert isinstance(info.value, FileNotFoundError)  # evaluate.py skips such sets in its default suite
    message = str(info.value)
    for expected in _expected_in_message(name, tmp_path):
        assert expected in message
    if name.startswith("tin_"):
        assert str(tmp_path / TINY_IMAGENET_TEST_IMAGES) in message


# ----------------------------------------------------------------------------- Tiny ImageNet test images

def test_tin_crop_is_a_seeded_random_crop_of_each_test_image(tmp_path):
    paths = _write_tiny_imagenet(tmp_path)
    crops = build_ood_dataset("tin_crop", RAW_RGB, tmp_path, seed=1)
    again = build_ood_dataset("tin_crop", RAW_RGB, tmp_path, seed=1)
    other = build_ood_dataset("tin_crop", RAW_RGB, tmp_path, seed=2)
    assert len(crops) == 4
    for index, path in enumerate(paths):
        x = crops[index][0]
        assert torch.equal(x, again[index][0])
        image = TF.to_tensor(load_image(path).convert("RGB"))
        windows = image.unfold(1, 32, 1).unfold(2, 32, 1).permute(1, 2, 0, 3, 4)  # [33, 33, 3, 32, 32]
        assert (windows - x).abs().flatten(2).amax(2).min() < 1e-6  # a 32x32 window of the 64x64 image
    assert any(not torch.equal(crops[i][0], other[i][0]) for i in range(4))
    _check(crops, RAW_RGB, 4)
    _check(build_ood_dataset("tin_crop", CIFAR_SPEC, tmp_path), CIFAR_SPEC, 4)
    _check(build_ood_dataset("tin_crop", MNIST_SPEC, tmp_path), MNIST_SPEC, 4)

    subset = build_ood_dataset("tin_crop", RAW_RGB, tmp_path, seed=1, num_images=2)
    assert len(subset) == 2
    for position, (index, _) in enumerate(subset.items):  # an image's crop does not depend on num_images
        assert torch.equal(subset[position][0], crops[index][0])


def test_tin_resize_downsamples_each_test_image_with_antialiasing(tmp_path):
    paths = _write_tiny_imagenet(tmp_path)
    resized = build_ood_dataset("tin_resize", RAW_RGB, tmp_path)
    for index, path in enumerate(paths):
        image = TF.to_tensor(load_image(path).convert("RGB")).unsqueeze(0)
        expected = F.interpolate(image, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)[0]
        assert (resized[index][0] - expected).abs().max() < 2 / 255
    _check(resized, RAW_RGB, 4)
    _check(build_ood_dataset("tin_resize", MNIST_SPEC, tmp_path), MNIST_SPEC, 4)


def test_released_folder_is_preferred_to_the_tiny_imagenet_images(tmp_path):
    _write_tiny_imagenet(tmp_path)
    _write_images(tmp_path / PAPER_ARCHIVES["tin_crop"].folder, 2)
    assert len(build_ood_dataset("tin_crop", CIFAR_SPEC, tmp_path)) == 2
    assert len(build_ood_dataset("tin_resize", CIFAR_SPEC, tmp_path)) == 4  # its own archive folder is absent


# ----------------------------------------------------------------------------- CIFAR-20 and CIFAR-10bw

def _labels(dataset) -> list[int]:
    """The label that the test writer stored in the red pixel (0, 0) of every image (raw RGB spec)."""
    return sorted(round(float(dataset[i][0][0, 0, 0]) * 255) for i in range(len(dataset)))


def test_cifar20_is_the_complement_of_the_models_80_classes(tmp_path):
    write_cifar100(tmp_path)  # one test image per fine label, label in the red pixel (0, 0)
    names = [f"fine{i:02d}" for i in range(100)]
    in_classes, out_classes = cifar80_split(3)
    cifar80_spec = dataclasses.replace(RAW_RGB, class_names=tuple(names[c] for c in in_classes))
    assert _labels(build_ood_dataset("cifar20", cifar80_spec, tmp_path)) == out_classes
    assert _labels(build_ood_dataset("cifar20", RAW_RGB, tmp_path)) == cifar80_split(0)[1]  # default split
    _check(build_ood_dataset("cifar20", CIFAR_SPEC, tmp_path), CIFAR_SPEC, 20)
    _check(build_ood_dataset("cifar20", MNIST_SPEC, tmp_path, num_images=5), MNIST_SPEC, 5)


def _is_gray(dataset) -> bool:
    return all(torch.equal(x[0], x[1]) and torch.equal(x[1], x[2]) for x, _ in (dataset[i] for i in range(3)))


def test_cifar10bw_from_the_pickles(tmp_path):
    write_cifar10(tmp_path)  # 20 test images
    _check(build_ood_dataset("cifar10bw", MNIST_SPEC, tmp_path), MNIST_SPEC, 20)
    _check(build_ood_dataset("cifar10bw", CIFAR_SPEC, tmp_path), CIFAR_SPEC, 20)
    assert _is_gray(build_ood_dataset("cifar10bw", RAW_RGB, tmp_path))


def test_cifar10bw_from_class_folders(tmp_path):
    for name in CIFAR10_NAMES[:2]:
        _write_images(tmp_path / "cifar10-jpeg" / "test" / name, 2)
    _check(build_ood_dataset("cifar10bw", MNIST_SPEC, tmp_path), MNIST_SPEC, 4)
    assert _is_gray(build_ood_dataset("cifar10bw", RAW_RGB, tmp_path))


# ----------------------------------------------------------------------------- Omniglot and notMNIST

def test_omniglot_is_inverted_and_resized(tmp_path):
    folder = tmp_path / "omniglot-py" / "images_evaluation"
    for alphabet, character, index in (("Angelic", "character01", 1), ("Angelic", "character02", 2),
                                       ("Tengwar", "character01", 3)):
        image = Image.new("1", (105, 105), 1)  # white background, black strokes, as released
        ImageDraw.Draw(image).line((10, 10 * index, 95, 90), fill=0, width=8)
        path = folder / alphabet / character / f"{index:04d}_01.png"
        path.parent.mkdir(parents=True)
        image.save(path)
    dataset = build_ood_dataset("omniglot", MNIST_SPEC, tmp_path)
    _check(dataset, MNIST_SPEC, 3)
    for x, _ in (dataset[i] for i in range(3)):
        assert x[0, 0, 0] == 0 and x[0, -1, 0] == 0  # the background is black, like MNIST's
        assert x.max() > 0.9 and x.mean() < 0.3  # a few white strokes
    _check(build_ood_dataset("omniglot", CIFAR_SPEC, tmp_path), CIFAR_SPEC, 3)


def _write_notmnist(folder: Path) -> None:
    for i, letter in enumerate("ABCDEFGHIJ"):
        (folder / letter).mkdir(parents=True)
        _noise_image(28, "L", seed=i).save(folder / letter / f"{letter}.png")
    (folder / "A" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")


def test_notmnist_skips_corrupt_files_with_one_counting_warning(tmp_path):
    _write_notmnist(tmp_path / "notMNIST_small")
    with pytest.warns(UserWarning, match=r"skipped 1 image file\(s\) .* cannot be decoded"):
        dataset = build_ood_dataset("notmnist", MNIST_SPEC, tmp_path)
    _check(dataset, MNIST_SPEC, 10)
    with pytest.warns(UserWarning):
        _check(build_ood_dataset("notmnist", CIFAR_SPEC, tmp_path), CIFAR_SPEC, 10)


def test_notmnist_download_without_a_published_md5(tmp_path, monkeypatch):
    _write_notmnist(tmp_path / "staging" / "notMNIST_small")
    served = _tar_gz(tmp_path / "served.tar.gz", tmp_path / "staging")
    source = ood_sets.NOTMNIST
    assert source.resources[0].md5 is None
    resource = dataclasses.replace(source.resources[0], urls=(served.as_uri(),))
    monkeypatch.setattr(ood_sets, "NOTMNIST", dataclasses.replace(source, resources=(resource,)))
    root = tmp_path / "root"
    with pytest.warns(UserWarning, match="skipped 1"):
        _check(build_ood_dataset("notmnist", MNIST_SPEC, root, download=True), MNIST_SPEC, 10)
    with pytest.warns(UserWarning, match="skipped 1"):  # the saved archive is reused without a checksum
        _check(build_ood_dataset("notmnist", MNIST_SPEC, root, download=True), MNIST_SPEC, 10)


# ----------------------------------------------------------------------------- any folder of images

def _write_mixed_folder(folder: Path) -> None:
    (folder / "nested" / "deeper").mkdir(parents=True)
    _noise_image(40, "L").save(folder / "gray.png")
    Image.new("RGBA", (20, 30), (255, 0, 0, 128)).save(folder / "rgba.png")
    _noise_image(32).convert("P", palette=Image.ADAPTIVE).save(folder / "nested" / "palette.png")
    _noise_image(64).save(folder / "nested" / "deeper" / "photo.jpg")
    (folder / "nested" / "corrupt.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("not an image either")


def test_any_folder_of_images(tmp_path):
    folder = tmp_path / "my_photos"
    _write_mixed_folder(folder)
    for spec in (CIFAR_SPEC, MNIST_SPEC):
        with pytest.warns(UserWarning, match=r"skipped 1 image file\(s\) .* cannot be decoded"):
            _check(build_ood_dataset(str(folder), spec, tmp_path / "unused_root"), spec, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(build_ood_dataset(folder, MNIST_SPEC, num_images=2)) == 2
        module = OODDataModule(str(folder), batch_size=4).bind(MNIST_SPEC)
        images, labels = next(iter(module.test_dataloader()))
    assert images.shape == (4, 1, 28, 28) and labels.tolist() == [-1] * 4
    assert module.name == ood_set_name(folder) == ood_set_name(f"{folder}/") == "my_photos"
    assert ood_set_name("gaussian") == "gaussian" and ood_set_name("tin_crop") == "tin_crop"


def test_a_folder_is_exactly_its_decodable_images(tmp_path):
    """A truncated JPEG (its header still parses) is skipped with one counting warning; a symbolic-link loop and a
    second link to a folder are read once; an excluded folder inside (the run's output) is not read."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i in range(3):
        _noise_image(32, seed=i).save(folder / "sub" / f"{i}.jpg")
    whole = (folder / "sub" / "0.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    with Image.open(folder / "truncated.jpg") as image:
        assert image.size == (32, 32)  # the header alone looks fine
    (folder / "self").symlink_to(folder, target_is_directory=True)
    (folder / "again").symlink_to(folder / "sub", target_is_directory=True)
    (folder / "evaluation" / "figures").mkdir(parents=True)
    _noise_image(32).save(folder / "evaluation" / "figures" / "plot.png")
    with pytest.warns(UserWarning, match=r"skipped 1 image file\(s\) .* cannot be decoded .*truncated.jpg"):
        paths = find_images(folder, exclude=[folder / "evaluation"])
    # sorted walk: "again" (a link to "sub") comes first; "self" (the folder itself) and "sub" are then known
    assert [p.relative_to(folder).as_posix() for p in paths] == ["again/0.jpg", "again/1.jpg", "again/2.jpg"]
    with pytest.warns(UserWarning, match="cannot be decoded"):
        assert len(build_ood_dataset(folder, CIFAR_SPEC, exclude=[folder / "evaluation"])) == 3
    with pytest.warns(UserWarning, match="cannot be decoded"):
        assert len(build_ood_dataset(folder, CIFAR_SPEC)) == 4  # the figure, when not excluded


def test_two_ood_folders_with_one_name_are_refused(tmp_path):
    for parent in ("a", "b"):
        (tmp_path / parent / "photos").mkdir(parents=True)
        _noise_image(32).save(tmp_path / parent / "photos" / "x.png")
    folders = [str(tmp_path / "a" / "photos"), str(tmp_path / "b" / "photos")]
    with pytest.raises(ValueError, match=r"two OOD sets are named 'photos'.*a/photos.*b/photos.*rename"):
        build_ood_suite(folders, (), CIFAR_SPEC, tmp_path, 0, None, False, False)


def test_empty_folder_and_unknown_names_raise(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no decodable images"):
        build_ood_dataset(str(tmp_path / "empty"), CIFAR_SPEC)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"broken")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no decodable images"):
        build_ood_dataset(str(tmp_path / "broken"), CIFAR_SPEC)
    for call in (lambda: build_ood_dataset("no_such_set", CIFAR_SPEC), lambda: ood_set_name("no_such_set"),
                 lambda: OODDataModule(str(tmp_path / "missing"))):
        with pytest.raises(ValueError, match="unknown OOD set"):
            call()


def test_every_paper_set_is_registered():
    assert {"tin_crop", "tin_resize", "lsun_crop", "lsun_resize", "isun", "gaussian", "uniform", "cifar20",
            "omniglot", "notmnist", "cifar10bw"} <= set(available_ood_sets())


# ----------------------------------------------------------------------------- real data (../shared/datasets)

@pytest.mark.real_data
def test_real_tiny_imagenet_crop_and_resize():
    root = shared_dataset("tiny-imagenet-200").parent
    crops = build_ood_dataset("tin_crop", CIFAR_SPEC, root)
    assert len(crops) == 10_000
    gray = [i for i, (_, path) in enumerate(crops.items[:2000]) if Image.open(path).mode == "L"]
    assert gray, "expected some grayscale Tiny ImageNet test images"
    for name in ("tin_crop", "tin_resize"):
        for spec in (CIFAR_SPEC, MNIST_SPEC):
            subset = build_ood_dataset(name, spec, root, num_images=64)
            _check(subset, spec, 64)
    for index in gray[:3]:  # converted to RGB: three equal channels
        pixels = _pixels(crops[index][0], CIFAR_SPEC)
        assert torch.allclose(pixels[0], pixels[1], atol=1e-6) and torch.allclose(pixels[1], pixels[2], atol=1e-6)


@pytest.mark.real_data
def test_real_cifar10bw_from_the_jpeg_copy():
    root = shared_dataset("cifar10-jpeg").parent
    dataset = build_ood_dataset("cifar10bw", MNIST_SPEC, root)
    assert len(dataset) == 10_000
    _check(build_ood_dataset("cifar10bw", MNIST_SPEC, root, num_images=64), MNIST_SPEC, 64)


# ----------------------------------------------------------------------------- what a folder may hold (issue 29)

def test_a_named_pipe_in_a_folder_is_skipped_not_read(tmp_path):
    """Before issue 29 a FIFO named like an image hung the run (``open`` waited for a writer)."""
    folder = tmp_path / "pipes"
    _write_images(folder, 2, suffix=".png")
    os.mkfifo(folder / "stuck.png")
    (folder / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.warns(UserWarning, match=r"skipped 2 file\(s\) under .*pipes that are not regular files") as record:
        assert [p.name for p in find_images(folder)] == ["img_0.png", "img_1.png"]
    assert len(record) == 1
    with pytest.raises(OSError, match="stuck.png is not a regular file"):
        load_image(folder / "stuck.png")  # and never waits


def test_file_names_that_are_not_utf8_count_and_decode(tmp_path):
    """Names whose bytes are not UTF-8 (read as surrogate escapes) are images like any other: every one is in the
    set, exactly once. (Before issue 29 their CSV row crashed the writer: see test_predict.py.)"""
    folder = tmp_path / "latin1"
    _write_images(folder, 3, suffix=".png")
    for i in range(4):
        _noise_image(32, seed=10 + i).save(os.fsdecode(bytes(folder) + b"/\xe9t\xe9_" + str(i).encode() + b".png"))
    paths = find_images(folder)
    assert len(paths) == 7 and len(build_ood_dataset(folder, RAW_RGB)) == 7
    assert sum("\udce9" in p.name for p in paths) == 4
    first = next(p for p in paths if p.name == "\udce9t\udce9_0.png")
    assert np.array_equal(np.asarray(load_image(first)), np.asarray(_noise_image(32, seed=10)))


def test_gif_files_are_read_from_their_first_frame(tmp_path):
    """Before issue 29 ``.gif`` was not an image extension: static and animated GIFs were left out of a folder
    without a word. Now an animated file gives its first frame (the one a still viewer shows)."""
    folder = tmp_path / "gifs"
    folder.mkdir()
    red, blue = (Image.new("RGB", (8, 8), color) for color in ((255, 0, 0), (0, 0, 255)))
    red.save(folder / "animated.gif", save_all=True, append_images=[blue], duration=100, loop=0)
    blue.save(folder / "static.gif")
    assert Image.open(folder / "animated.gif").n_frames == 2
    dataset = build_ood_dataset(folder, RAW_RGB)
    assert len(dataset) == 2
    first, static = (dataset[i][0] for i in range(2))
    assert torch.allclose(first, torch.tensor([1.0, 0, 0]).view(3, 1, 1).expand(3, 32, 32))
    assert torch.allclose(static, torch.tensor([0, 0, 1.0]).view(3, 1, 1).expand(3, 32, 32))


def test_a_decompression_bomb_is_one_error_naming_the_file(tmp_path, monkeypatch):
    """Before issue 29 Pillow's DecompressionBombError stopped the run raw, without the file's name."""
    folder = tmp_path / "bombs"
    _write_images(folder, 2, size=32, suffix=".png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400)  # 32 x 32 = 1024 pixels > 2 x 400: a "bomb"
    with pytest.raises(UserError, match=r"image .*bombs/img_0.png is too large to decode safely \(Image size \(1024 "
                                        r"pixels\) exceeds limit"):
        find_images(folder)


def test_a_set_name_too_long_for_its_files_is_refused_before_scoring(tmp_path):
    """Before issue 29 a 245-character folder name failed after scoring had started (``File name too long`` for
    ``scores/<set>...``)."""
    folder = tmp_path / ("x" * 245)
    _write_images(folder, 2)
    with pytest.raises(UserError, match=r"has a name of 245 bytes: .* at most 120; link the folder under a shorter"):
        build_ood_suite([str(folder)], (), CIFAR_SPEC, tmp_path, 0, None, False, False)
    (tmp_path / "short").symlink_to(folder, target_is_directory=True)
    assert ood_set_name(tmp_path / "short") == "short"  # as the message says


def test_the_same_folder_given_twice_is_named_as_such(tmp_path):
    """Before issue 29 ``a/photos`` and ``a/photos/`` were refused as two folders with one name, to rename."""
    _write_images(tmp_path / "photos", 2)
    for twice in ([str(tmp_path / "photos"), f"{tmp_path / 'photos'}/"], ["gaussian", "gaussian"]):
        with pytest.raises(UserError, match=r"the OOD set '(photos|gaussian)' is given twice .*: give it once"):
            build_ood_suite(twice, (), CIFAR_SPEC, tmp_path, 0, 10, False, False)
