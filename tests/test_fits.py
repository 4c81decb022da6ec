"""odin_pl.protocol.fits: the training images of the fits, one feature pass for every fit, fit files reused only on a
match,
2 processes fit exactly what 1 process fits; through evaluate.py: results, score files and detectors record the
fits, and a detector refuses a changed fit."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import pytest
import torch
import torch.distributed as dist
from conftest import free_port
from data_factories import write_cifar10
from feature_nets import images, labels, tiny_net
from torch.utils.data import Subset, TensorDataset

import evaluate
from datamodules import CIFAR10DataModule, DigitsDataModule
from odin_pl.deploy.detector import Detector
from odin_pl.training.checkpoint import load_model, read_checkpoint
from odin_pl.fingerprint import dataset_sha256, file_sha256
from odin_pl.protocol.fits import RunFits, fit_data, load_fit, prepare_fits, save_fit, training_set
from odin_pl.methods import create_method
from odin_pl.protocol.plan import MethodGrid
from odin_pl.protocol.tuning import split_indices

FITTED = ("mahalanobis", "react", "knn")
N = 61  # uneven shards on 2 processes


def _grids() -> list[MethodGrid]:
    return [MethodGrid.of("msp"), MethodGrid.of("mahalanobis", {"epsilon": [0.0, 0.002]}), MethodGrid.of("react"),
            MethodGrid.of("knn")]


def _training() -> TensorDataset:
    return TensorDataset(images(N, 4), labels(N))


def _prepare(folder: Path, weights: str = "w1", model=None, **options):
    return prepare_fits(model or tiny_net(), _grids(), _training(), folder=folder, weights_sha256=weights,
                        batch_size=16, **options)


def _count_passes(model) -> list[int]:
    """Record the batch size of every forward pass of the net (its first layer's inputs)."""
    calls: list[int] = []
    model.conv.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    return calls


def test_training_set_is_the_test_time_training_split_or_a_seeded_subset(tmp_path) -> None:
    write_cifar10(tmp_path)
    train = training_set(CIFAR10DataModule(data_root=str(tmp_path)))
    assert len(train) == 50 and train.augment is False  # load_split(train=True, augment=False)
    subset = training_set(DigitsDataModule(), fit_images=100, seed=7)
    assert isinstance(subset, Subset) and subset.indices == split_indices(1198, 100, 7)[0].tolist()
    assert training_set(DigitsDataModule(), 100, 7).indices == subset.indices != training_set(
        DigitsDataModule(), 100, 8).indices
    with pytest.raises(ValueError, match="--fit_images 1199 is more than the 1198 training images"):
        training_set(DigitsDataModule(), fit_images=1199)
    with pytest.raises(ValueError, match="the DataModule object has no training split"):
        training_set(object())
    with pytest.raises(FileNotFoundError, match="fit on the in-distribution training images, which are not "
                                                "available: .*cifar-10"):
        training_set(CIFAR10DataModule(data_root=str(tmp_path / "empty")))


def test_one_pass_gives_every_fit_saved_with_its_fingerprints(tmp_path) -> None:
    model = tiny_net()
    calls = _count_passes(model)
    run = _prepare(tmp_path, model=model)
    assert calls == [16, 16, 16, 16, 13]  # the check's model(x) on the first batch, then 4 batches: one pass
    data = fit_data(model, _training(), batch_size=16)
    for grid in _grids()[1:]:
        saved = load_fit(tmp_path / f"{grid.name}.pt")
        assert saved.sha256 == file_sha256(tmp_path / f"{grid.name}.pt") == run.sha256[grid.name]
        assert saved.context == {"weights_sha256": "w1", "train_images_sha256": dataset_sha256(_training()),
                                 "n_images": N, "seed": 0, "dtype": "float64"}
        expected = create_method(grid.name).fit(data, grid.settings)
        assert saved.tensors.keys() == expected.keys()
        assert all(torch.equal(saved.tensors[key], expected[key]) for key in expected)
        assert all(torch.equal(run.fits.of(grid.name)[key], expected[key]) for key in expected)
    assert [g.settings for g in run.methods if g.name == "knn"] == [((1.0,), (10.0,), (20.0,), (50.0,))]
    assert run.notes == ["knn: k = 100, 200 dropped from the grid: larger than the feature bank of 61 training "
                         "images"] and run.reused == []


def test_saved_fits_are_reused_only_when_they_match(tmp_path) -> None:
    _prepare(tmp_path)
    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    model = tiny_net()
    calls = _count_passes(model)
    again = _prepare(tmp_path, model=model, reuse=True)
    assert again.reused == list(FITTED) and calls == [] and not any("fitted again" in n for n in again.notes)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == mtimes
    other = _prepare(tmp_path, weights="w2", model=model, reuse=True)  # other weights: fitted again, one pass
    assert other.reused == [] and len(calls) == 5
    assert other.notes[0] == (f"mahalanobis.pt, react.pt, knn.pt in {tmp_path}: made with other weights, training "
                              "images or settings; fitted again")
    with pytest.raises(ValueError, match="knn.pt: missing, or made with other weights, training images or "
                                         "settings; run the protocol \\(again\\)"):
        _prepare(tmp_path, weights="w3", reuse=True, fit_missing=False)


def fit_process(rank: int, port: int, out: str, prepare: Callable[[Path], RunFits] | None = None) -> None:
    """One of 2 gloo processes: fits into ``out/two`` (process 0 writes; ``prepare(folder)``, by default this
    module's) and saves the fits it got."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        run = (prepare or _prepare)(Path(out) / "two")
        torch.save({name: dict(fit) for name, fit in run.fits.tensors.items()}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_fit_exactly_what_one_process_fits(tmp_path) -> None:
    one = _prepare(tmp_path / "one")
    torch.multiprocessing.spawn(fit_process, args=(free_port(), str(tmp_path)), nprocs=2)
    for name in FITTED:  # the same bytes: the features were gathered in index order and fitted once
        assert file_sha256(tmp_path / "two" / f"{name}.pt") == file_sha256(tmp_path / "one" / f"{name}.pt")
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got.keys() == one.fits.tensors.keys()
        assert all(torch.equal(got[name][key], one.fits.of(name)[key]) for name in got for key in got[name])


def test_evaluate_records_the_fits_and_detectors_refuse_a_changed_fit(quickstart_ckpt: str, tmp_path) -> None:
    out = tmp_path / "run"
    command = ["protocol", "--ckpt", quickstart_ckpt, "--methods", "msp,mahalanobis,react,knn", "--fit_images", "600",
               "--tuning.grids", '{"mahalanobis": {"epsilon": [0, 0.002]}, "knn": {"k": [1, 50]}}',
               "--ood.sets", "gaussian", "--ood.num_images", "100", "--bootstrap.resamples", "0",
               "--output.logger", "false", "--output.dir", str(out)]
    run = evaluate.main(command)
    results = json.loads((out / "results.json").read_text())
    shas = {name: file_sha256(out / "fits" / f"{name}.pt") for name in FITTED}
    assert {name: fit["sha256"] for name, fit in results["fits"].items()} == shas
    assert {fit["n_images"] for fit in results["fits"].values()} == {600}
    assert torch.load(out / "scores" / "gaussian__test.pt")["context"]["fits_sha256"] == shas
    # Resume: the fits and the scores are reused.
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "fits").iterdir()}
    resumed = evaluate.main([*command, "--output.resume", "true"])
    assert resumed.fits.reused == list(FITTED) and len(resumed.reused_score_files) == 4
    assert {p: p.stat().st_mtime_ns for p in (out / "fits").iterdir()} == mtimes
    assert resumed.result.records == run.result.records
    # A detector records its fit; predict scores with it; a changed fit file or other weights are refused.
    detector_file = out / "detectors" / "gaussian.knn.json"
    assert json.loads(detector_file.read_text())["fit"] == {"file": "../fits/knn.pt", "sha256": shas["knn"]}
    rows = evaluate.main(["predict", "--ckpt", quickstart_ckpt, "--images", "gaussian", "--num_images", "5",
                          "--detector", str(detector_file), "--output_dir", str(tmp_path / "predict")])
    assert rows.read_text().splitlines()[0] == "index,path,predicted_class,class_name,msp,knn,is_ood"
    model = load_model(read_checkpoint(quickstart_ckpt))
    with pytest.raises(ValueError, match="tuned with the weights of SHA-256 .*, but the model's weights have SHA-256 "
                                         "other"):
        Detector.load(detector_file, model, weights_sha256="other")
    knn = load_fit(out / "fits" / "knn.pt")
    save_fit(out / "fits" / "knn.pt", "knn", [(1.0,)], knn.context, {"bank": knn.tensors["bank"][:-1]})
    with pytest.raises(ValueError, match=f"knn.pt has SHA-256 .*, not the {shas['knn']} it was used with"):
        Detector.load(detector_file, model)


def test_fit_images_is_checked_before_any_work(quickstart_ckpt: str, tmp_path) -> None:
    common = ["protocol", "--ckpt", quickstart_ckpt, "--output.dir", str(tmp_path / "out")]
    with pytest.raises(ValueError, match="--fit_images must be at least 1"):
        evaluate.main([*common, "--methods", "msp,knn", "--fit_images", "0"])
    with pytest.raises(ValueError, match="--fit_images sets the training images of the feature methods .* "
                                         "--tuning.methods \\(msp, odin\\) has none of them"):
        evaluate.main([*common, "--fit_images", "10"])
    assert not (tmp_path / "out").exists()
