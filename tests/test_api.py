"""``odin_pl.evaluate``: the library call runs evaluate.py's protocol (one implementation): identical results.json on
the quickstart (its MLP with seeded weights, as in the golden test), on a checkpoint, an in-memory LightningModule,
a plain ``nn.Module`` and a test Dataset, and in a process group of 2 CPU processes."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset
from test_golden import COMMON, seeded_checkpoint  # noqa: F401  (the fixture)

import evaluate
import odin_pl
from conftest import free_port
from datamodules import DigitsDataModule
from datamodules.suite import build_ood_suite
from odin_pl.errors import UserError
from odin_pl.protocol.records import Record
from odin_pl.training.checkpoint import load_model, read_checkpoint

OPTIONS = {"temperatures": [1, 10, 1000], "epsilons": [0, 0.004, 0.05], "precision": "64-true",
           "accelerator": "cpu"}
OOD = ["gaussian", "uniform", "photos"]


def _ood_sets(datamodule: DigitsDataModule) -> dict:
    """The OOD sets of COMMON, built as evaluate.py builds them."""
    return build_ood_suite(OOD, (), datamodule.image_spec, datamodule.data_root, 0, 300, False, False).datasets


def _results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


@pytest.fixture(scope="module")
def command_line_run(seeded_checkpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("cli")
    evaluate.main(["protocol", "--ckpt", seeded_checkpoint, "--output.dir", str(out), *COMMON])
    return out


def test_a_checkpoint_gives_the_results_json_of_evaluate_py(seeded_checkpoint: str, command_line_run: Path,  # noqa: F811
                                                            tmp_path: Path) -> None:
    evaluation = odin_pl.evaluate(seeded_checkpoint, None, _ood_sets(DigitsDataModule()), **OPTIONS)
    files = evaluation.save(tmp_path)
    assert _results(tmp_path) == _results(command_line_run)
    assert (tmp_path / "table.md").read_text() == (command_line_run / "table.md").read_text() \
        == evaluation.table() + "\n" * ((command_line_run / "table.md").read_text().endswith("\n"))
    assert sorted(p.name for p in files.detectors) == sorted(p.name for p in (command_line_run / "detectors").iterdir())
    assert all(isinstance(r, Record) for r in evaluation.records) and len(evaluation.records) == 2 * len(OOD)
    assert json.loads(json.dumps([r.to_dict() for r in evaluation.records])) == _results(command_line_run)["records"]


@pytest.mark.parametrize("which", ["lightning_module", "plain_module_and_dataset"])
def test_an_in_memory_model_gives_the_same_records(seeded_checkpoint: str, command_line_run: Path,  # noqa: F811
                                                   which: str, tmp_path: Path) -> None:
    """The checkpoint's ImageClassifier with its DataModule, or its bare network (nn.Sequential-free timm MLP) with
    the test Dataset and the spec from the argument: the same records; the weights are saved in the run folder."""
    model = load_model(read_checkpoint(seeded_checkpoint))
    datamodule = DigitsDataModule()
    ood = _ood_sets(datamodule)
    if which == "lightning_module":
        evaluation = odin_pl.evaluate(model, datamodule, ood, output_dir=tmp_path, **OPTIONS)
    else:
        datamodule.setup("test")
        evaluation = odin_pl.evaluate(model.net.eval(), datamodule.test_set, ood, spec=datamodule.image_spec,
                                      output_dir=tmp_path, **OPTIONS)
    evaluation.save(tmp_path)
    expected, actual = _results(command_line_run), _results(tmp_path)
    assert actual["records"] == expected["records"] and actual["selections"] == expected["selections"]
    assert actual["checkpoint"] == str(tmp_path / "weights.pt") and (tmp_path / "weights.pt").is_file()


def test_bad_calls_fail_in_one_line(seeded_checkpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    ood = _ood_sets(DigitsDataModule())
    with pytest.raises(UserError, match="no option temprature"):
        odin_pl.evaluate(seeded_checkpoint, None, ood, temprature=2)
    with pytest.raises(UserError, match="protocol must be one of"):
        odin_pl.evaluate(seeded_checkpoint, None, ood, protocol="papers")
    with pytest.raises(UserError, match="ood must map OOD set names to Datasets"):
        odin_pl.evaluate(seeded_checkpoint, None, ["gaussian"])
    with pytest.raises(UserError, match="image spec is unknown"):
        odin_pl.evaluate(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval(),
                         DigitsDataModule().load_split(train=False, augment=False), ood, **OPTIONS)
    evaluation = odin_pl.evaluate(seeded_checkpoint, None, ood, methods="msp", **OPTIONS)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(UserError, match=r"pip install 'odin-pl\[pandas\]'"):
        evaluation.to_pandas()


def test_to_pandas_has_a_row_per_record(seeded_checkpoint: str) -> None:  # noqa: F811
    pandas = pytest.importorskip("pandas")
    evaluation = odin_pl.evaluate(seeded_checkpoint, None, _ood_sets(DigitsDataModule()), **OPTIONS)
    frame = evaluation.to_pandas()
    assert isinstance(frame, pandas.DataFrame) and len(frame) == len(evaluation.records)
    assert frame["auroc"].tolist() == [r.metrics["auroc"] for r in evaluation.records]


def _group_process(rank: int, port: int, ckpt: str, out: str) -> None:
    """One of 2 processes in a process group that the caller set up; process 0 saves the records."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        evaluation = odin_pl.evaluate(ckpt, None, _ood_sets(DigitsDataModule()), **OPTIONS)
        if rank == 0:
            Path(out, "records.json").write_text(json.dumps([r.to_dict() for r in evaluation.records]))
    finally:
        torch.distributed.destroy_process_group()


def test_in_a_process_group_each_process_scores_its_shard(seeded_checkpoint: str, command_line_run: Path,  # noqa: F811
                                                         tmp_path: Path) -> None:
    torch.multiprocessing.spawn(_group_process, args=(free_port(), seeded_checkpoint, str(tmp_path)), nprocs=2)
    records = json.loads((tmp_path / "records.json").read_text())
    assert records == _results(command_line_run)["records"]


@pytest.fixture(scope="module")
def library_run(seeded_checkpoint: str, tmp_path_factory: pytest.TempPathFactory) -> tuple:  # noqa: F811
    """odin_pl.evaluate of the seeded checkpoint (float64; msp, odin, energy), its run folder, the model in float64
    and the in-distribution test split it reported on."""
    out = tmp_path_factory.mktemp("library")
    evaluation = odin_pl.evaluate(seeded_checkpoint, None, _ood_sets(DigitsDataModule()),
                                  methods=["msp", "odin", "energy"], **OPTIONS)
    evaluation.save(out)
    model = load_model(read_checkpoint(seeded_checkpoint)).double()
    datamodule = DigitsDataModule()
    datamodule.setup("test")
    test = Subset(datamodule.test_set, evaluation.run.result.splits["in_distribution"].test.tolist())
    return evaluation, out, model, test


@pytest.mark.parametrize("method", ["msp", "odin", "energy"])
def test_a_fitted_detector_scores_as_the_protocol_did(library_run: tuple, method: str) -> None:
    """Detector.fit on the in-distribution test split at the setting tuned on gaussian: its scores (score_loader,
    score) equal the protocol's on the same images (float64, to 1e-12: other batch sizes), its threshold equals
    the run's detector file's, and odin_pl.score gives the same scores by parameter name."""
    evaluation, out, model, test = library_run
    stem = f"gaussian.{method}" if method != "msp" else "fixed.msp"
    saved = json.loads((out / "detectors" / f"{stem}.json").read_text())
    detector = odin_pl.Detector.fit(model, test, method, saved["params"], batch_size=64)
    expected = evaluation.run.result.in_test_scores[method, detector.setting]
    scores = detector.score_loader(DataLoader(test, batch_size=37))
    torch.testing.assert_close(scores, expected, atol=1e-12, rtol=0)
    assert detector.threshold == pytest.approx(saved["threshold"], abs=1e-12, rel=0)
    x = torch.stack([test[i][0] for i in range(20)]).double()
    direct = odin_pl.score(model, x, method, **saved["params"])
    torch.testing.assert_close(direct, detector.score(x), atol=1e-12, rtol=0)
    torch.testing.assert_close(direct, expected[:20], atol=1e-12, rtol=0)
    assert isinstance(detector, odin_pl.ODINDetector) == (method == "odin")


def test_energy_by_name_equals_a_numpy_reference(library_run: tuple) -> None:
    """odin_pl.score(model, x, "energy", temperature=T) = T logsumexp(f(x) / T) (numpy, float64, 1e-12)."""
    _, _, model, test = library_run
    x = torch.stack([test[i][0] for i in range(16)]).double()
    with torch.no_grad():
        logits = model(x).numpy()
    for temperature in (1.0, 7.0):
        z = logits / temperature
        top = z.max(axis=1, keepdims=True)
        reference = temperature * (top[:, 0] + np.log(np.exp(z - top).sum(axis=1)))
        np.testing.assert_allclose(odin_pl.score(model, x, "energy", temperature=temperature).numpy(), reference,
                                   atol=1e-12, rtol=0)
    with pytest.raises(UserError, match="has no parameter temprature"):
        odin_pl.score(model, x, "energy", temprature=1)
    with pytest.raises(UserError, match="'mahalanobis' scores with a fit on the training images"):
        odin_pl.score(model, x, "mahalanobis")


def test_predict_images_prepares_files_and_pil_images_as_the_evaluation(library_run: tuple, tmp_path: Path) -> None:
    """8-bit grayscale digits-size images (a file and a PIL image): the scores of predict_images equal those of
    (pixels / 255 - mean) / std computed here; odin_pl.transforms is that preprocessing."""
    _, out, model, _ = library_run
    detector = odin_pl.Detector.load(out / "detectors" / "gaussian.odin.json", model)
    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 8, 8), dtype=np.uint8)
    Image.fromarray(pixels[0]).save(tmp_path / "a.png")
    detections = detector.predict_images([tmp_path / "a.png", Image.fromarray(pixels[1])])
    spec = detector.input_spec
    x = torch.from_numpy((pixels / 255.0 - spec.mean[0]) / spec.std[0])[:, None]
    torch.testing.assert_close(odin_pl.transforms(spec)(Image.fromarray(pixels[1])).double(), x[1], atol=1e-6,
                               rtol=0)
    torch.testing.assert_close(detections.score, detector.score(x), atol=1e-6, rtol=0)
    assert detections.is_ood.tolist() == (detections.score < detector.threshold).tolist()
    with pytest.raises(UserError, match="does not exist"):
        detector.predict_images([tmp_path / "missing.png"])


def test_a_fitted_method_fits_on_training_images_and_saves_its_fit(library_run: tuple, tmp_path: Path) -> None:
    """mahalanobis: Detector.fit fits on training images, saves the fit; the saved detector loads and scores the
    same; without training images, one line says what to give."""
    _, _, model, test = library_run
    train = Subset(DigitsDataModule().load_split(train=True, augment=False), range(300))
    with pytest.raises(UserError, match="fits on in-distribution training images: give"):
        odin_pl.Detector.fit(model, test, "mahalanobis")
    detector = odin_pl.Detector.fit(model, test, "mahalanobis", fit_on=train, fit_file=tmp_path / "m.pt")
    loaded = odin_pl.Detector.load(detector.save(tmp_path / "m.json"), model)
    x = torch.stack([test[i][0] for i in range(10)]).double()
    torch.testing.assert_close(loaded.score(x), detector.score(x), atol=0, rtol=0)
    assert loaded.threshold == detector.threshold
    in_scores = detector.score_loader(DataLoader(test, batch_size=100))
    assert (in_scores >= detector.threshold).double().mean() >= 0.95


def _layer4(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torchvision's ResNet up to layer4, written out."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    return model.layer4(model.layer3(model.layer2(model.layer1(x))))


@pytest.mark.parametrize("which", ["resnet18", "sequential"])
def test_a_model_without_timms_api_names_its_layers(which: str, tmp_path: Path) -> None:
    """torchvision's resnet18 (untrained, 32 x 32) and an nn.Sequential: once their classifier (and feature maps)
    are named, h is the classifier's input (equal to the network written out), and knn (a fitted feature method)
    scores as a numpy reference of -d_(k) on the normalized features (float64, 1e-10)."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    if which == "resnet18":
        model, names, shape = torchvision.models.resnet18(num_classes=3), ("fc", "layer4"), (3, 32, 32)
    else:
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 16), torch.nn.ReLU(),
                                    torch.nn.Linear(16, 3))
        names, shape = ("3", None), (3, 4, 4)
    model = model.double().eval()
    x, train = torch.randn(6, *shape, dtype=torch.float64), torch.randn(20, *shape, dtype=torch.float64)
    spec = odin_pl.ImageSpec(shape[1], 3, (0.0,) * 3, (1.0,) * 3, ("a", "b", "c"))
    labels = torch.arange(20) % 3
    in_data, fit_on = torch.utils.data.TensorDataset(x, labels[:6]), torch.utils.data.TensorDataset(train, labels)
    with pytest.raises(UserError, match="name its layers with odin_pl.name_layers"):
        odin_pl.Detector.fit(model, in_data, "knn", spec=spec, fit_on=fit_on, fit_file=tmp_path / "knn.pt")
    with pytest.raises(UserError, match="has no module 'head'"):
        odin_pl.name_layers(model, "head")
    features = odin_pl.name_layers(model, *names)
    maps: list[torch.Tensor] = []
    with torch.no_grad():
        h = features.features(x, maps.append if names[1] else None)
        expected = (torch.flatten(model.avgpool(_layer4(model, x)), 1) if which == "resnet18"
                    else model[2](model[1](model[0](x))))
        torch.testing.assert_close(h, expected, atol=0, rtol=0)
        torch.testing.assert_close(features.classifier(h), model(x), atol=0, rtol=0)
        if names[1]:
            torch.testing.assert_close(maps[0], _layer4(model, x), atol=0, rtol=0)
    detector = odin_pl.Detector.fit(model, in_data, "knn", {"k": 2}, spec=spec, fit_on=fit_on,
                                    fit_file=tmp_path / "knn.pt")
    with torch.no_grad():
        bank, z = (features.features(train).numpy(), features.features(x).numpy())
    bank, z = bank / np.linalg.norm(bank, axis=1, keepdims=True), z / np.linalg.norm(z, axis=1, keepdims=True)
    distances = np.sqrt(np.maximum(0.0, 2 - 2 * z @ bank.T))
    np.testing.assert_allclose(detector.score(x).numpy(), -np.sort(distances, axis=1)[:, 1], atol=1e-10, rtol=0)


def test_a_fitted_method_of_a_run_without_a_folder_saves_a_detector_that_loads(seeded_checkpoint: str,  # noqa: F811
                                                                                tmp_path: Path) -> None:
    """knn fitted in the temporary run folder: save() copies its fit beside the detectors, whose detector loads
    and gives the run's scores of the in-distribution test split."""
    evaluation = odin_pl.evaluate(seeded_checkpoint, None, _ood_sets(DigitsDataModule()), methods="knn",
                                  protocol="fixed", params="knn.k=5", fit_images=200, **OPTIONS)
    evaluation.save(tmp_path)
    assert (tmp_path / "fits" / "knn.pt").is_file()
    assert _results(tmp_path)["fits"]["knn"]["file"] == str(tmp_path / "fits" / "knn.pt")
    model = load_model(read_checkpoint(seeded_checkpoint)).double()
    detector = odin_pl.Detector.load(tmp_path / "detectors" / "fixed.knn.json", model)
    datamodule = DigitsDataModule()
    datamodule.setup("test")
    test = Subset(datamodule.test_set, evaluation.run.result.splits["in_distribution"].test.tolist())
    torch.testing.assert_close(detector.score_loader(DataLoader(test, batch_size=64)),
                               evaluation.run.result.in_test_scores["knn", (5.0,)], atol=1e-12, rtol=0)
