"""OpenOOD v1.5: image lists, preprocessing, the four benchmarks as suites, downloads, and the metrics.

References: scikit-learn called as OpenOOD's ``evaluators/metrics.py`` calls it (float64, tolerance 1e-12);
PIL and numpy for the preprocessing (tolerance 1e-6 on float32 tensors); pytorch-ood 0.4.0's OpenOOD benchmark
classes for which images a list names.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn import metrics as skm

from conftest import shared_dataset
from datamodules.download import DatasetNotFoundError
from datamodules.openood import Preprocessing, load_openood_image, read_image_list
from datamodules.openood_benchmarks import BENCHMARKS, ListSet, build_openood_suite
from datamodules.openood_download import IMAGE_LISTS, SET_ARCHIVES, ImageRoot, require_list
from odin_pl.errors import UserError
from odin_pl.fingerprint import dataset_sha256
from odin_pl.metrics import ood_metrics
from odin_pl.openood_metrics import (OPENOOD_METRIC_NAMES, group_mean, id_accuracy, openood_metric_rows,
                                     openood_metrics, seed_mean_std)
from odin_pl.spec import ImageSpec

TOL = 1e-12
PIXEL_TOL = 1e-6


# ----------------------------------------------------------------------------------------------------- metrics
def openood_reference(id_conf: np.ndarray, ood_conf: np.ndarray) -> dict[str, float]:
    """OpenOOD's ``auc_and_fpr_recall`` with scikit-learn: OOD positive, score -conf, scikit-learn's defaults."""
    conf = np.concatenate([id_conf, ood_conf]).astype(np.float64)
    ood = np.concatenate([np.zeros(len(id_conf), int), np.ones(len(ood_conf), int)])
    fpr, tpr, _ = skm.roc_curve(ood, -conf)
    precision_in, recall_in, _ = skm.precision_recall_curve(1 - ood, conf)
    precision_out, recall_out, _ = skm.precision_recall_curve(ood, -conf)
    return {"fpr95": float(fpr[np.argmax(tpr >= 0.95)]), "auroc": skm.auc(fpr, tpr),
            "aupr_in": skm.auc(recall_in, precision_in), "aupr_out": skm.auc(recall_out, precision_out)}


def _pairs(seed: int, count: int, tied: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(count):
        n_id, n_ood = (int(v) for v in rng.integers(1, 60, 2))
        if tied:  # few distinct values: many groups of tied ID and OOD scores
            levels = int(rng.integers(1, 9))
            pairs.append((rng.integers(0, levels, n_id).astype(float),
                          rng.integers(0, levels, n_ood).astype(float) - int(rng.integers(0, 2))))
        else:
            pairs.append((rng.normal(1.0, 1.0, n_id), rng.normal(0.0, 1.0, n_ood)))
    return pairs


@pytest.mark.parametrize("tied", [False, True])
def test_metrics_equal_openood_sklearn_calls(tied):
    for id_conf, ood_conf in _pairs(seed=int(tied), count=150, tied=tied):
        got, want = openood_metrics(id_conf, ood_conf), openood_reference(id_conf, ood_conf)
        for name in OPENOOD_METRIC_NAMES:
            assert abs(got[name] - want[name]) <= TOL, (name, got[name], want[name], id_conf, ood_conf)


def test_fpr95_keeps_roc_curves_drop_intermediate_on_ties():
    """40 levels with one ID and one OOD image each: every ROC point is collinear, roc_curve keeps only the ends,
    so OpenOOD's FPR@95 is 1 where the exact rate at the threshold reaching TPR 0.95 is 0.95."""
    conf = np.arange(40, dtype=np.float64)
    ood = np.r_[np.zeros(40, int), np.ones(40, int)]
    fpr_all, tpr_all, _ = skm.roc_curve(ood, -np.r_[conf, conf], drop_intermediate=False)
    assert fpr_all[np.argmax(tpr_all >= 0.95)] == 0.95
    assert openood_reference(conf, conf)["fpr95"] == 1.0
    assert openood_metrics(conf, conf)["fpr95"] == 1.0
    assert abs(openood_metrics(conf, conf)["auroc"] - 0.5) <= TOL
    assert ood_metrics(conf, conf)["fpr_at_95_tpr_ood_positive"] == 0.95  # the exact rate, odin_pl.metrics


@pytest.mark.parametrize("tied", [False, True])
def test_relation_to_odin_pl_metrics(tied):
    """DESIGN's relation: without ties OpenOOD's FPR@95 is odin_pl.metrics' fpr_at_95_tpr_ood_positive, with ties
    it is never smaller; AUROC is the same number."""
    for id_conf, ood_conf in _pairs(seed=7, count=100, tied=tied):
        openood, ours = openood_metrics(id_conf, ood_conf), ood_metrics(id_conf, ood_conf)
        exact = ours["fpr_at_95_tpr_ood_positive"]
        assert openood["fpr95"] == exact if not tied else openood["fpr95"] >= exact
        assert abs(openood["auroc"] - ours["auroc"]) <= TOL


def test_aupr_is_trapezoids_not_average_precision():
    id_conf, ood_conf = np.array([0.9, 0.5, 0.4]), np.array([0.6, 0.3])
    got = openood_metrics(id_conf, ood_conf)["aupr_in"]
    labels, scores = np.r_[1, 1, 1, 0, 0], np.r_[id_conf, ood_conf]
    assert abs(got - openood_reference(id_conf, ood_conf)["aupr_in"]) <= TOL
    assert abs(got - skm.average_precision_score(labels, scores)) > 1e-3


def test_rows_of_settings_equal_each_setting_alone():
    rng = np.random.default_rng(3)
    id_rows, ood_rows = rng.integers(0, 6, (7, 50)).astype(float), rng.integers(0, 6, (7, 30)).astype(float) - 1
    rows = openood_metric_rows(torch.from_numpy(id_rows), torch.from_numpy(ood_rows))
    for r in range(7):
        want = openood_reference(id_rows[r], ood_rows[r])
        for name in OPENOOD_METRIC_NAMES:
            assert abs(float(rows[name][r]) - want[name]) <= TOL


@pytest.mark.parametrize("tied", [False, True])
def test_bootstrap_weights_equal_the_resampled_images(tied):
    """Counts per image (a bootstrap resample, many images drawn 0 or several times) give the metrics of the
    resample's images, including the drop_intermediate rule after zero-count groups vanish."""
    rng = np.random.default_rng(5)
    (id_conf, ood_conf), = _pairs(seed=11, count=1, tied=tied)
    id_counts = rng.multinomial(len(id_conf), np.full(len(id_conf), 1 / len(id_conf)), size=60)
    ood_counts = rng.multinomial(len(ood_conf), np.full(len(ood_conf), 1 / len(ood_conf)), size=60)
    rows = openood_metric_rows(id_conf[None], ood_conf[None], id_counts, ood_counts)
    for b in range(60):
        want = openood_reference(np.repeat(id_conf, id_counts[b]), np.repeat(ood_conf, ood_counts[b]))
        for name in OPENOOD_METRIC_NAMES:
            assert abs(float(rows[name][b]) - want[name]) <= TOL, (name, b)


def test_metric_inputs_are_checked():
    with pytest.raises(UserError, match="NaN or Inf"):
        openood_metrics([0.1, float("nan")], [0.2])
    with pytest.raises(UserError, match="rows"):
        openood_metric_rows(torch.zeros(2, 3), torch.zeros(3, 3))
    with pytest.raises(UserError, match="non-negative integers"):
        openood_metric_rows(torch.zeros(1, 2), torch.zeros(1, 2), [[0.5, 1.0]], [[1, 1]])
    with pytest.raises(UserError, match="draws no image"):
        openood_metric_rows(torch.zeros(1, 2), torch.zeros(1, 2), [[0, 0]], [[1, 1]])


def test_accuracy_group_means_and_seed_std():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 1.0], [5.0, 0.0]])
    labels = torch.tensor([0, 0, 0, 1])
    assert float(id_accuracy(logits, labels)) == 0.5  # [1, 1] ties go to class 0, as numpy's argmax
    counts = torch.tensor([[2, 0, 1, 1], [0, 1, 0, 3]])
    assert torch.equal(id_accuracy(logits, labels, counts), torch.tensor([0.75, 0.0], dtype=torch.float64))
    per_set = {"cifar100": 0.8, "tin": 0.9, "mnist": 0.5}
    assert group_mean(per_set, ["cifar100", "tin"]) == pytest.approx(0.85, abs=TOL)
    with pytest.raises(UserError, match="svhn"):
        group_mean(per_set, ["mnist", "svhn"])
    values = [0.91, 0.93, 0.96]
    mean, std = seed_mean_std(values)
    assert mean == pytest.approx(np.mean(values), abs=TOL) and std == pytest.approx(np.std(values), abs=TOL)
    assert std != pytest.approx(np.std(values, ddof=1), abs=1e-6)


# ----------------------------------------------------------------------------------------- lists and images


def reference_preprocess(path: Path, pre_size: int, crop: int, mean, std, resize: bool = True) -> np.ndarray:
    """OpenOOD's preprocessing by PIL and numpy: RGB, shorter side to pre_size (PIL bilinear, the longer side
    int(pre_size * long / short)), center crop at round((h - crop) / 2), [0, 1], normalize."""
    image = Image.open(path).convert("RGB")
    if resize:
        w, h = image.size
        size = (pre_size, int(pre_size * h / w)) if w <= h else (int(pre_size * w / h), pre_size)
        if size != (w, h):
            image = image.resize(size, Image.BILINEAR)
    pixels = np.asarray(image, dtype=np.float64) / 255.0
    if resize:
        h, w = pixels.shape[:2]
        top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
        pixels = pixels[top:top + crop, left:left + crop]
    return ((pixels - np.asarray(mean)) / np.asarray(std)).transpose(2, 0, 1)


def _write_image(path: Path, seed: int, size: tuple[int, int], mode: str = "RGB") -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    array = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(array[..., 0] if channels == 1 else array, mode).save(path)


def test_read_image_list_splits_at_the_first_space(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("cifar10/test/cat/0001.png 3\ntin/val/images/val_2.JPEG -1\r\n")
    assert read_image_list(good) == [("cifar10/test/cat/0001.png", 3), ("tin/val/images/val_2.JPEG", -1)]
    for text, match in [("a.png 1\n\nb.png 2\n", "line 2"), ("a.png\n", "integer label"),
                        ("/abs/a.png 1\n", "relative"), ("a.png one\n", "integer label"), ("", "empty")]:
        bad = tmp_path / "bad.txt"
        bad.write_text(text)
        with pytest.raises(UserError, match=match):
            read_image_list(bad)


@pytest.mark.parametrize("mode,size", [("RGB", (45, 38)), ("L", (28, 28)), ("RGBA", (20, 31)), ("RGB", (32, 32))])
def test_preprocessing_equals_a_pil_numpy_reference(tmp_path, mode, size):
    path = tmp_path / "image.png"
    _write_image(path, seed=sum(size), size=size, mode=mode)
    pre = Preprocessing(36, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    got = pre.transform(pre.image_spec("x"))(load_openood_image(path))
    want = reference_preprocess(path, 36, 32, pre.mean, pre.std)
    assert got.shape == (3, 32, 32)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=PIXEL_TOL)
    model = ImageSpec(size=32, channels=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    got_model = pre.transform(model)(load_openood_image(path))  # a model's own normalization
    np.testing.assert_allclose(got_model.numpy(), reference_preprocess(path, 36, 32, model.mean, model.std),
                               rtol=0, atol=PIXEL_TOL)
    with pytest.raises(UserError, match="32x32 RGB"):
        pre.transform(ImageSpec(size=28, channels=1, mean=(0.5,), std=(0.5,)))


def test_imagenet_c_is_to_tensor_and_normalize_only(tmp_path):
    path = tmp_path / "c.png"
    _write_image(path, seed=1, size=(24, 24))
    pre = Preprocessing(28, 24, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    got = pre.transform(pre.image_spec("x"), resize=False)(load_openood_image(path))
    np.testing.assert_allclose(got.numpy(), reference_preprocess(path, 0, 0, pre.mean, pre.std, resize=False),
                               rtol=0, atol=PIXEL_TOL)


def test_truncated_images_are_read_as_openood_reads_them(tmp_path):
    from PIL import ImageFile

    path = tmp_path / "cut.jpg"
    _write_image(path, seed=2, size=(40, 40))
    Image.open(path).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(OSError):
        Image.open(path).load()
    assert load_openood_image(path).size == (40, 40)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    path.write_bytes(b"not an image")
    with pytest.raises(OSError, match="cannot read image"):
        load_openood_image(path)


# ------------------------------------------------------------------------------- suites on a generated layout
CIFAR10 = BENCHMARKS["cifar10"]


def _unchecked_sizes(benchmark):
    """The benchmark with no expected line counts (generated lists are short)."""
    def free(entry: ListSet) -> ListSet:
        return dataclasses.replace(entry, size=None)

    return dataclasses.replace(benchmark, train=free(benchmark.train), val=free(benchmark.val),
                               test=free(benchmark.test), ood_val=free(benchmark.ood_val),
                               near=tuple(map(free, benchmark.near)), far=tuple(map(free, benchmark.far)),
                               csid=tuple(map(free, benchmark.csid)))


SMALL_CIFAR10 = _unchecked_sizes(CIFAR10)
SET_FOLDER = {"cifar10_train": "cifar10", "cifar10_val": "cifar10", "cifar10_test": "cifar10", "val_tin": "tin"}


def make_openood_layout(root: Path, benchmark=SMALL_CIFAR10, per_list: int = 2, images: bool = True
                        ) -> dict[str, list]:
    """Lists and (with ``images``) images of ``benchmark`` in OpenOOD's layout under ``root`` (36x40 PNG, MNIST
    28x28 gray JPEG), each list naming its own files; returns each list file's entries."""
    entries = {}
    groups = [("id", benchmark.train), ("id", benchmark.val), ("id", benchmark.test), ("ood", benchmark.ood_val),
              *(("ood", e) for e in benchmark.near + benchmark.far), *(("id", e) for e in benchmark.csid)]
    for index, (kind, entry) in enumerate(groups):
        folder = SET_FOLDER.get(entry.name, entry.name)
        lines = []
        for i in range(per_list):
            gray = folder == "mnist"
            relpath = f"{folder}/{Path(entry.list_file).stem}/{i}.{'jpg' if gray else 'png'}"
            if images:
                _write_image(root / entry.images / relpath, seed=100 * index + i,
                             size=(28, 28) if gray else (36, 40), mode="L" if gray else "RGB")
            lines.append((relpath, -1 if kind == "ood" else (index + i) % benchmark.num_classes))
        list_path = root / "benchmark_imglist" / entry.list_file
        list_path.parent.mkdir(parents=True, exist_ok=True)
        list_path.write_text("".join(f"{relpath} {label}\n" for relpath, label in lines))
        entries[entry.list_file] = lines
    return entries


def test_suite_reads_every_list_with_openoods_preprocessing(tmp_path):
    entries = make_openood_layout(tmp_path)
    suite = build_openood_suite(SMALL_CIFAR10, tmp_path, train=True)
    assert sorted(suite.id) == ["test", "train", "val"]
    assert list(suite.near) == ["cifar100", "tin"] and list(suite.far) == ["mnist", "svhn", "texture", "places365"]
    assert list(suite.csid) == ["cifar10c"] and suite.skipped == {}
    assert suite.spec == CIFAR10.image_spec
    checks = [(suite.id["test"], "cifar10/test_cifar10.txt"), (suite.ood_val, "cifar10/val_tin.txt"),
              (suite.far["mnist"], "cifar10/test_mnist.txt"), (suite.csid["cifar10c"], "cifar10/test_cifar10c.txt")]
    pre = CIFAR10.preprocessing
    for dataset, list_file in checks:
        assert len(dataset) == len(entries[list_file])
        for i, (relpath, label) in enumerate(entries[list_file]):
            image, got_label = dataset[i]
            assert got_label == label
            want = reference_preprocess(tmp_path / "images_classic" / relpath, 32, 32, pre.mean, pre.std)
            np.testing.assert_allclose(image.numpy(), want, rtol=0, atol=PIXEL_TOL)
    assert suite.sources["tin"] == str(tmp_path / "benchmark_imglist" / "cifar10" / "test_tin.txt")
    images, labels = next(iter(torch.utils.data.DataLoader(suite.far["mnist"], batch_size=2)))
    assert images.shape == (2, 3, 32, 32) and labels.tolist() == [-1, -1]  # grayscale MNIST as RGB
    before = dataset_sha256(suite.id["test"])  # the protocol's fingerprints read the listed files
    _write_image(tmp_path / "images_classic" / entries["cifar10/test_cifar10.txt"][0][0], seed=99, size=(36, 40))
    assert dataset_sha256(suite.id["test"]) != before


def test_missing_sets_are_skipped_with_what_to_download_and_required_ones_raise(tmp_path):
    make_openood_layout(tmp_path)
    shutil.rmtree(tmp_path / "images_classic" / "svhn")
    (tmp_path / "benchmark_imglist" / "cifar10" / "test_places365.txt").unlink()
    suite = build_openood_suite(SMALL_CIFAR10, tmp_path)
    assert "svhn" not in suite.far and "places365" not in suite.far and "train" not in suite.id
    svhn = suite.skipped["svhn"]
    assert "\n" not in svhn and SET_ARCHIVES["svhn"].describe() in svhn
    assert str(tmp_path / "images_classic" / "svhn") in svhn and "2 of 2 images" in svhn
    assert IMAGE_LISTS.describe() in suite.skipped["places365"]
    shutil.rmtree(tmp_path / "images_classic" / "tin")
    with pytest.raises(DatasetNotFoundError, match=r"tin\.zip \(Google Drive id 1PZ-ixyx52U989IKsMA2OT-24fToTrelC"):
        build_openood_suite(SMALL_CIFAR10, tmp_path)


def test_line_counts_and_labels_are_checked(tmp_path):
    make_openood_layout(tmp_path)
    with pytest.raises(UserError, match="has 2 lines but OpenOOD v1.5's has 1000"):
        build_openood_suite("cifar10", tmp_path)
    test_list = tmp_path / "benchmark_imglist" / "cifar10" / "test_cifar100.txt"
    test_list.write_text(test_list.read_text().replace(" -1\n", " 4\n", 1))
    with pytest.raises(UserError, match="label 4 .* expected -1"):
        build_openood_suite(SMALL_CIFAR10, tmp_path)
    with pytest.raises(UserError, match="unknown OpenOOD benchmark"):
        build_openood_suite("cifar11", tmp_path)


def test_a_folder_of_images_joins_a_suite(tmp_path):
    make_openood_layout(tmp_path)
    shutil.rmtree(tmp_path / "images_classic" / "mnist")
    folder = tmp_path / "my_digits"
    for i in range(3):
        _write_image(folder / "sub" / f"{i}.png", seed=7 + i, size=(28, 28), mode="L")
    suite = build_openood_suite(SMALL_CIFAR10, tmp_path, folders={"far/mnist": folder})
    assert "mnist" not in suite.skipped and len(suite.far["mnist"]) == 3
    image, label = suite.far["mnist"][2]
    pre = CIFAR10.preprocessing
    want = reference_preprocess(folder / "sub" / "2.png", 32, 32, pre.mean, pre.std)
    assert label == -1 and np.abs(image.numpy() - want).max() <= PIXEL_TOL
    suite.add_folder("near", "digits", folder)
    assert list(suite.near)[-1] == "digits" and suite.sources["digits"] == str(folder)
    with pytest.raises(UserError, match="near or far"):
        suite.add_folder("csid", "x", folder)
    with pytest.raises(UserError, match="<near|far|val>/<name>"):
        build_openood_suite(SMALL_CIFAR10, tmp_path, folders={"mnist": folder})


def test_a_folder_can_stand_in_for_the_ood_validation_list(tmp_path):
    """Without OpenOOD's val_tin (list and images gone), a folder replaces it under its own name, and the
    protocol's view names the benchmark's list as the one it stands in for."""
    make_openood_layout(tmp_path)
    (tmp_path / "benchmark_imglist" / "cifar10" / "val_tin.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match="val_tin"):
        build_openood_suite(SMALL_CIFAR10, tmp_path)
    folder = tmp_path / "tin_test_part"
    for i in range(4):
        _write_image(folder / f"{i}.png", seed=40 + i, size=(64, 64), mode="RGB")
    suite = build_openood_suite(SMALL_CIFAR10, tmp_path, folders={"val/tin_test_part": folder})
    assert suite.ood_val_name == "tin_test_part" and len(suite.ood_val) == 4
    image, label = suite.ood_val[3]
    pre = CIFAR10.preprocessing
    want = reference_preprocess(folder / "3.png", 32, 32, pre.mean, pre.std)
    assert label == -1 and np.abs(image.numpy() - want).max() <= PIXEL_TOL
    sets = suite.sets()
    assert sets.ood_val_name == "tin_test_part" and sets.listed["val"] == ("val_tin",)
    assert sets.sources["tin_test_part"] == str(folder) and "val_tin" not in sets.sources
    with pytest.raises(UserError, match="'tin' is already a near-OOD set"):
        suite.add_folder("val", "tin", folder)


def test_a_sets_listed_images_can_come_from_another_folder(tmp_path, monkeypatch):
    """The lists' file names read from a copy in another format (as the JPEG copy of CIFAR-10); nothing of that
    set is downloaded into OpenOOD's folder."""
    entries = make_openood_layout(tmp_path)
    copy = tmp_path / "cifar10-jpeg"
    for png in sorted((tmp_path / "images_classic" / "cifar10").rglob("*.png")):
        jpg = copy / png.relative_to(tmp_path / "images_classic" / "cifar10").with_suffix(".jpg")
        jpg.parent.mkdir(parents=True, exist_ok=True)
        Image.open(png).save(jpg, quality=90)
    shutil.rmtree(tmp_path / "images_classic" / "cifar10")
    suite = build_openood_suite(SMALL_CIFAR10, tmp_path, image_roots={"cifar10": ImageRoot(copy, ".jpg")})
    relpath, label = entries["cifar10/test_cifar10.txt"][1]
    path = copy / Path(relpath).relative_to("cifar10").with_suffix(".jpg")
    assert suite.id["test"].samples[1] == (path, label)
    pre = CIFAR10.preprocessing
    want = reference_preprocess(path, 32, 32, pre.mean, pre.std)
    assert np.abs(suite.id["test"][1][0].numpy() - want).max() <= PIXEL_TOL
    path.unlink()
    asked = fake_gdown(monkeypatch, {})
    with pytest.raises(DatasetNotFoundError, match=f"put 'cifar10''s images in {copy}"):
        build_openood_suite(SMALL_CIFAR10, tmp_path, download=True, image_roots={"cifar10": copy})
    assert asked == []


# ------------------------------------------------------------------------------------------------ downloads
def make_archives(tmp_path: Path) -> tuple[dict[str, Path], dict[str, list]]:
    """OpenOOD's zips of a generated layout: benchmark_imglist.zip with its top folder, each set's zip bare
    (contents of images_classic/<set>/) except mnist's, which has its top folder; keyed by Drive id."""
    source = tmp_path / "source"
    entries = make_openood_layout(source)
    archives = {}
    with zipfile.ZipFile(tmp_path / "benchmark_imglist.zip", "w") as handle:
        for path in sorted((source / "benchmark_imglist").rglob("*.txt")):
            handle.write(path, path.relative_to(source).as_posix())
    archives[IMAGE_LISTS.drive_id] = tmp_path / "benchmark_imglist.zip"
    for folder in sorted((source / "images_classic").iterdir()):
        zip_path = tmp_path / f"{folder.name}.zip"
        base = folder.parent if folder.name == "mnist" else folder
        with zipfile.ZipFile(zip_path, "w") as handle:
            for path in sorted(folder.rglob("*.*")):
                handle.write(path, path.relative_to(base).as_posix())
        archives[SET_ARCHIVES[folder.name].drive_id] = zip_path
    return archives, entries


def fake_gdown(monkeypatch, archives: dict[str, Path]) -> list[str]:
    """Make gdown.download copy the generated archive of the asked id; returns the ids asked for."""
    import gdown

    asked = []

    def download(id=None, output=None, quiet=False, **kwargs):
        asked.append(id)
        shutil.copyfile(archives[id], output)
        return output

    monkeypatch.setattr(gdown, "download", download)
    return asked


def test_download_fetches_and_checks_openoods_archives(tmp_path, monkeypatch):
    archives, entries = make_archives(tmp_path)
    asked = fake_gdown(monkeypatch, archives)
    root = tmp_path / "data"
    suite = build_openood_suite(SMALL_CIFAR10, root, download=True, train=True)
    assert suite.skipped == {} and len(suite.far["mnist"]) == len(entries["cifar10/test_mnist.txt"])
    assert asked[0] == IMAGE_LISTS.drive_id and sorted(asked[1:]) == sorted(
        SET_ARCHIVES[n].drive_id for n in ("cifar10", "tin", "cifar100", "mnist", "svhn", "texture", "places365",
                                           "cifar10c"))
    assert (root / "images_classic" / "mnist" / "test_mnist" / "0.jpg").is_file()  # nested zip: no mnist/mnist/
    assert not list(root.rglob("*.zip"))
    asked.clear()
    build_openood_suite(SMALL_CIFAR10, root, download=True)
    assert asked == []  # everything is there: nothing fetched again


def test_a_bad_archive_fails_with_one_line_naming_archive_and_folder(tmp_path, monkeypatch):
    archives, _ = make_archives(tmp_path)
    page = tmp_path / "quota.html"
    page.write_text("<html>Google Drive - Quota exceeded</html>")
    archives[SET_ARCHIVES["tin"].drive_id] = page
    fake_gdown(monkeypatch, archives)
    root = tmp_path / "data"
    with pytest.raises(DatasetNotFoundError) as err:
        build_openood_suite(SMALL_CIFAR10, root, download=True)
    message = str(err.value)
    assert "\n" not in message and "not a zip file" in message and SET_ARCHIVES["tin"].describe() in message
    assert str(root / "images_classic" / "tin") in message and not (root / "images_classic" / "tin.zip").exists()
    archives[SET_ARCHIVES["tin"].drive_id] = archives[SET_ARCHIVES["svhn"].drive_id]  # the wrong set's zip
    with pytest.raises(DatasetNotFoundError, match=r"2 of 2 images listed in .*val_tin\.txt are missing"):
        build_openood_suite(SMALL_CIFAR10, root, download=True)


def test_a_real_download_without_network_fails_with_one_line(tmp_path, monkeypatch):
    """gdown itself runs; the name lookup fails as on a machine without internet access."""
    def no_network(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    with pytest.raises(DatasetNotFoundError) as err:
        build_openood_suite("cifar10", tmp_path, download=True)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"could not download {IMAGE_LISTS.describe()} into "
                                                      f"{tmp_path} (")
    with pytest.raises(DatasetNotFoundError, match="or pass download=True"):
        build_openood_suite("cifar10", tmp_path)


# -------------------------------------------------------------------------- pytorch-ood 0.4.0 and the real lists
def _pytorch_ood_benchmark(monkeypatch, tmp_path: Path, lists: Path, name: str):
    """pytorch-ood's OpenOOD benchmark class reading the lists in ``lists`` (its imglist cache is pointed there),
    and the one folder it resolves every list's paths against."""
    pytest.importorskip("pytorch_ood")
    from pytorch_ood.benchmark.img import openood as ptood

    cache = tmp_path / "hub" / "openood_benchmark_imglist"
    cache.mkdir(parents=True)
    (cache / "benchmark_imglist").symlink_to(lists)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    their_root = tmp_path / "their_root"
    their_root.mkdir()
    cls = {"cifar10": ptood.CIFAR10_OpenOOD, "cifar100": ptood.CIFAR100_OpenOOD,
           "imagenet200": ptood.ImageNet200_OpenOOD, "imagenet": ptood.ImageNet_OpenOOD}[name]
    return cls(root=str(their_root), transform=lambda image: image, download=False), their_root


def _same_images_as_pytorch_ood(benchmark, ours_root: Path, theirs, their_root: Path) -> None:
    """Each split names the same files with the same labels in the same order (paths relative to the images
    folder), near-OOD then far-OOD in the same order, for every split pytorch-ood has."""
    def ours(entry: ListSet) -> list[tuple[str, int]]:
        return require_list(ours_root, entry.list_file, entry.size, download=False)

    def files(dataset) -> list[tuple[str, int]]:
        return [(os.path.relpath(path, their_root), label) for path, label in zip(dataset.files, dataset.labels)]

    assert files(theirs.train_in) == ours(benchmark.train)
    assert files(theirs.val_in) == ours(benchmark.val) and files(theirs.test_in) == ours(benchmark.test)
    assert files(theirs.val_ood) == ours(benchmark.ood_val)
    assert (len(theirs._near_ood), len(theirs._far_ood)) == (len(benchmark.near), len(benchmark.far))
    assert len(theirs.test_oods) == len(benchmark.near + benchmark.far)
    for dataset, entry in zip(theirs.test_oods, benchmark.near + benchmark.far):
        assert files(dataset) == ours(entry)


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_pytorch_ood_names_the_same_images_for_generated_lists(tmp_path, monkeypatch, name):
    """Same list files, splits and groups as pytorch-ood for all four benchmarks (ImageNet's textures lists
    resolve against images_classic here, as OpenOOD's DATA_INFO has it; pytorch-ood reads one folder)."""
    root, benchmark = tmp_path / "data", _unchecked_sizes(BENCHMARKS[name])
    make_openood_layout(root, benchmark, images=False)
    theirs, their_root = _pytorch_ood_benchmark(monkeypatch, tmp_path, root / "benchmark_imglist", name)
    _same_images_as_pytorch_ood(benchmark, root, theirs, their_root)


def _real_lists(tmp_path: Path) -> Path:
    """A data root whose benchmark_imglist/ is the real lists of ../shared/datasets (no images)."""
    lists = shared_dataset("openood-v1.5-imglist")
    root = tmp_path / "data"
    root.mkdir()
    (root / "benchmark_imglist").symlink_to(lists)
    return root


@pytest.mark.real_data
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_real_lists_have_designs_counts_and_labels(tmp_path, name):
    root, benchmark = _real_lists(tmp_path), BENCHMARKS[name]
    ids = [benchmark.train, benchmark.val, benchmark.test, *benchmark.csid]
    for entry in [*ids, benchmark.ood_val, *benchmark.near, *benchmark.far]:
        entries = require_list(root, entry.list_file, entry.size, download=False)  # raises on another count
        labels = np.array([label for _, label in entries])
        if entry in ids:
            assert labels.min() == 0 and labels.max() == benchmark.num_classes - 1
        else:
            assert (labels == -1).all()
    val = {p for p, _ in require_list(root, benchmark.val.list_file, None, False)}
    test = {p for p, _ in require_list(root, benchmark.test.list_file, None, False)}
    assert not val & test and len(val | test) == 10_000  # the official test split, divided
    tin_val = {p for p, _ in require_list(root, benchmark.ood_val.list_file, None, False)}
    assert not tin_val & {p for p, _ in require_list(root, benchmark.near[1].list_file, None, False)}


@pytest.mark.real_data
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_pytorch_ood_names_the_same_images_for_the_real_lists(tmp_path, monkeypatch, name):
    root = _real_lists(tmp_path)
    theirs, their_root = _pytorch_ood_benchmark(monkeypatch, tmp_path, root / "benchmark_imglist", name)
    _same_images_as_pytorch_ood(BENCHMARKS[name], root, theirs, their_root)


