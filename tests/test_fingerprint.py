"""odin_pl.fingerprint: SHA-256 of a file's bytes, and of a data set's exact images and labels (arrays in memory,
image files, tensors, subsets, generated sets); any change of a pixel, label, file or index changes it; other data
sets are refused. Files are read again only when their stat facts changed."""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset, TensorDataset

from datamodules.image_folder import ArrayImageDataset, ImageFolderDataset, SpecArrayDataset, spec_transform
from datamodules.ood import NoiseDataset, PhotoCropsDataset
from datamodules.ood_natural import SeededCropDataset
from odin_pl import fingerprint
from odin_pl.fingerprint import FileHashes, dataset_sha256, file_sha256
from odin_pl.spec import ImageSpec

SPEC = ImageSpec(size=4, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)


def test_file_fingerprint_is_the_sha256_of_its_bytes(tmp_path) -> None:
    (tmp_path / "w").write_bytes(b"abc")
    assert file_sha256(tmp_path / "w") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def _arrays() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(5, 4, 4, 3), dtype=np.uint8), np.array([0, 1, 2, 1, 0])


@pytest.mark.parametrize("make", [lambda x, y: SpecArrayDataset(x, y, SPEC),
                                  lambda x, y: ArrayImageDataset(x, y, spec_transform(SPEC))],
                         ids=["SpecArrayDataset", "ArrayImageDataset"])
def test_array_datasets_are_fingerprinted_by_their_pixels_and_labels(make) -> None:
    x, y = _arrays()
    reference = dataset_sha256(make(x, y))
    assert reference == dataset_sha256(make(x.copy(), y.copy()))  # the content, not the object
    assert dataset_sha256(SpecArrayDataset(x, y, SPEC, augment=True)) == dataset_sha256(SpecArrayDataset(x, y, SPEC))
    pixel = x.copy()
    pixel[3, 2, 1, 0] ^= 1
    label = y.copy()
    label[4] = 2
    assert len({reference, dataset_sha256(make(pixel, y)), dataset_sha256(make(x, label)),
                dataset_sha256(make(x[:4], y[:4])), dataset_sha256(make(x[::-1].copy(), y[::-1].copy()))}) == 5
    # Independently: SHA-256 over a tag, then dtype, shape and C-order bytes of the images and of the labels.
    images = make(x, y).pixels.contiguous().numpy() if hasattr(make(x, y), "pixels") else x
    digest = hashlib.sha256(b"arrays")
    for array in (images, y.astype(np.int64)):
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    assert reference == digest.hexdigest()


def test_image_files_tensors_and_subsets_are_fingerprinted_and_others_refused(tmp_path) -> None:
    x, y = _arrays()
    samples = []
    for i, (image, label) in enumerate(zip(x, y)):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
        samples.append((tmp_path / f"{i}.png", int(label)))
    files = ImageFolderDataset(samples, spec_transform(SPEC))
    reference = dataset_sha256(files)
    moved = tmp_path / "moved"
    moved.mkdir()
    for path, _ in samples:  # where the files lie does not matter, their bytes do
        (moved / path.name).write_bytes(path.read_bytes())
    assert dataset_sha256(ImageFolderDataset([(moved / p.name, c) for p, c in samples], None)) == reference
    Image.fromarray(x[0] // 2).save(moved / "0.png")
    assert dataset_sha256(ImageFolderDataset([(moved / p.name, c) for p, c in samples], None)) != reference
    relabelled = [(p, (c + 1) % 3) if i == 2 else (p, c) for i, (p, c) in enumerate(samples)]
    assert dataset_sha256(ImageFolderDataset(relabelled, None)) != reference

    tensors = TensorDataset(torch.arange(12.0).view(3, 4), torch.tensor([0, 1, 0]))
    assert dataset_sha256(tensors) == dataset_sha256(TensorDataset(torch.arange(12.0).view(3, 4),
                                                                   torch.tensor([0, 1, 0])))
    assert dataset_sha256(tensors) != dataset_sha256(TensorDataset(torch.arange(12.0).view(3, 4),
                                                                   torch.tensor([0, 1, 1])))
    assert dataset_sha256(Subset(files, [0, 2])) not in (dataset_sha256(Subset(files, [2, 0])),
                                                        dataset_sha256(Subset(files, [0, 3])), reference)

    class Opaque(Dataset):
        def __len__(self) -> int:
            return 1

        def __getitem__(self, index: int):
            return torch.zeros(3, 4, 4), 0

    with pytest.raises(ValueError, match="cannot fingerprint a data set of type Opaque: odin_pl.fingerprint reads"):
        dataset_sha256(Opaque())
    floats = ArrayImageDataset(x.astype(np.float32), y, None)
    with pytest.raises(ValueError, match="its images are float32, expected uint8"):
        dataset_sha256(floats)


def _fail(path) -> str:
    raise AssertionError(f"{path} was read again")


def test_file_hashes_read_a_file_again_only_when_its_stat_facts_change(tmp_path, monkeypatch) -> None:
    image = tmp_path / "a.bmp"
    Image.fromarray(_arrays()[0][0]).save(image)
    before = os.stat(image)
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns))
    first = FileHashes(tmp_path / "hashes.json")
    assert first.sha256(image) == file_sha256(image)
    first.save()
    assert not (tmp_path / "hashes.json").exists()  # changed just now: the ctime might miss a change this tick
    monkeypatch.setattr(fingerprint, "RACY_SECONDS", 0.0)
    first.sha256(image)
    first.save()
    with monkeypatch.context() as patch:
        patch.setattr(fingerprint, "file_sha256", _fail)
        assert FileHashes(tmp_path / "hashes.json").sha256(image) == file_sha256(image)
    # Replaced by other pixels of the same size, with its mtime set back (a clock tick later): its ctime changed.
    stat, old = os.stat(image), file_sha256(image)
    time.sleep(0.05)
    Image.fromarray(_arrays()[0][1]).save(image)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (os.stat(image).st_size, os.stat(image).st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    assert FileHashes(tmp_path / "hashes.json").sha256(image) == file_sha256(image) != old
    (tmp_path / "hashes.json").write_text("{not json")
    assert FileHashes(tmp_path / "hashes.json").sha256(image) == file_sha256(image)


def test_generated_sets_are_fingerprinted_by_what_generates_them(tmp_path) -> None:
    noise = dataset_sha256(NoiseDataset("gaussian", SPEC, 5, seed=0))
    assert noise == dataset_sha256(NoiseDataset("gaussian", SPEC, 5, seed=0))
    others = [NoiseDataset("uniform", SPEC, 5), NoiseDataset("gaussian", SPEC, 6), NoiseDataset("gaussian", SPEC, 5, 1),
              NoiseDataset("gaussian", ImageSpec(size=5, channels=3, mean=SPEC.mean, std=SPEC.std), 5)]
    assert len({noise, *map(dataset_sha256, others)}) == 5
    photos = dataset_sha256(PhotoCropsDataset(SPEC, 4, seed=0))
    assert photos == dataset_sha256(PhotoCropsDataset(SPEC, 4, seed=0)) != dataset_sha256(PhotoCropsDataset(SPEC, 4, 1))
    x, _ = _arrays()
    for i, image in enumerate(x):
        Image.fromarray(np.kron(image, np.ones((10, 10, 1), dtype=np.uint8))).save(tmp_path / f"{i}.png")
    items = [(i, tmp_path / f"{i}.png") for i in range(5)]
    crops = dataset_sha256(SeededCropDataset(items, SPEC, seed=0))
    assert len({crops, dataset_sha256(SeededCropDataset(items, SPEC, seed=1)),
                dataset_sha256(SeededCropDataset(items[1:], SPEC, seed=0))}) == 3
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(tmp_path / "2.png")
    assert dataset_sha256(SeededCropDataset(items, SPEC, seed=0)) != crops
