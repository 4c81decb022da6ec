"""evaluate.py predict: a saved detector scores a folder of images, on one process or several."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, requires_gpu
from PIL import Image

import evaluate
from datamodules.ood import find_images
from odin_pl.images import ToSpec
from odin_pl import ODINDetector
from odin_pl.deploy.detector import Detection
from odin_pl.deploy.prediction import write_detections
from odin_pl.training.checkpoint import build_datamodule, load_model, read_checkpoint
from odin_pl.errors import NonFiniteScoresError, UserError
from odin_pl.fingerprint import file_sha256


@pytest.fixture(scope="module")
def setup(quickstart_ckpt: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """(checkpoint, detector file, folder of 13 images in nested folders, with files that are not images)."""
    ckpt = quickstart_ckpt
    checkpoint = read_checkpoint(ckpt)
    model, datamodule = load_model(checkpoint), build_datamodule(checkpoint)
    datamodule.setup("test")
    x_in = torch.stack([datamodule.test_set[i][0] for i in range(len(datamodule.test_set))])
    folder = tmp_path_factory.mktemp("predict")
    detector = ODINDetector(model, 1000.0, 0.002, model.image_spec, threshold=1.0)  # replaced by fit_threshold below
    detector.fit_threshold(detector.score(x_in), 0.95)
    detector_path = detector.save(folder / "detector.json")
    images = folder / "images"
    g = torch.Generator().manual_seed(0)
    for i in range(13):
        sub = images / ("b" if i % 2 else "a") / ("deep" if i % 3 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        pixels = (torch.rand(12, 10, 3, generator=g) * 255).byte().numpy()
        Image.fromarray(pixels).save(sub / f"img{i:02d}.png")
    (images / "notes.txt").write_text("not an image")
    return ckpt, str(detector_path), str(images)


def _rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_predict_writes_one_row_per_image_in_input_order(setup, tmp_path) -> None:
    ckpt, detector_path, images = setup
    path = evaluate.main(["predict", "--ckpt", ckpt, "--images", images, "--detector", detector_path, "--output_dir",
                          str(tmp_path), "--runtime.batch_size", "4", "--runtime.accelerator", "cpu"])
    assert path == tmp_path / "predictions" / "images.csv"
    rows = _rows(path)
    files = find_images(images)
    assert list(rows[0]) == ["index", "path", "predicted_class", "class_name", "msp", "odin", "is_ood"]
    assert [r["index"] for r in rows] == [str(i) for i in range(13)]
    assert [r["path"] for r in rows] == [str(f) for f in files]
    # The same numbers as the detector on the same images.
    model = load_model(read_checkpoint(ckpt))
    detector = ODINDetector.load(detector_path, model)
    to_spec = ToSpec(model.image_spec)
    x = torch.stack([to_spec(Image.open(f)) for f in files])
    detection = detector.predict_all(x)
    torch.testing.assert_close(torch.tensor([float(r["odin"]) for r in rows]), detection.score, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(torch.tensor([float(r["msp"]) for r in rows]), detection.baseline, rtol=1e-6, atol=1e-7)
    assert [int(r["predicted_class"]) for r in rows] == detection.predicted_class.tolist()
    assert [r["class_name"] for r in rows] == [r["predicted_class"] for r in rows]  # digits are named "0".."9"
    assert [r["is_ood"] == "True" for r in rows] == detection.is_ood.tolist()
    assert not list((tmp_path / "predictions").glob(".*"))  # no temporary file left


def test_predict_on_two_processes_equals_one(setup, tmp_path) -> None:
    """2 CPU processes (``evaluate.py predict --devices 2``, float64) write the same CSV as 1: every image once,
    rows in input order."""
    ckpt, detector_path, images = setup
    options = ["predict", "--ckpt", ckpt, "--images", images, "--detector", detector_path, "--runtime.batch_size", "3",
               "--runtime.accelerator", "cpu", "--runtime.precision", "64-true"]
    one = _rows(evaluate.main([*options, "--output_dir", str(tmp_path / "one")]))
    launched = subprocess.run([sys.executable, "evaluate.py", *options, "--output_dir", str(tmp_path / "two"),
                               "--devices", "2"], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert launched.returncode == 0, launched.stderr
    two = _rows(tmp_path / "two" / "predictions" / "images.csv")
    assert len(one) == len(two) == 13
    for a, b in zip(one, two):
        assert {k: a[k] for k in ("index", "path", "predicted_class", "is_ood")} == \
               {k: b[k] for k in ("index", "path", "predicted_class", "is_ood")}
        # float64 rounding may differ with the batch composition
        assert float(a["odin"]) == pytest.approx(float(b["odin"]), abs=1e-12)
        assert float(a["msp"]) == pytest.approx(float(b["msp"]), abs=1e-12)


def test_predict_errors_are_clear(setup, tmp_path) -> None:
    ckpt, detector_path, images = setup
    with pytest.raises(ValueError, match="predict needs --detector"):
        evaluate.main(["predict", "--ckpt", ckpt, "--images", images, "--output_dir", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="detector file .* does not exist"):
        evaluate.main(["predict", "--ckpt", ckpt, "--images", images, "--detector", str(tmp_path / "nope.json")])
    with pytest.raises(ValueError, match="unknown OOD set 'no_such_folder'"):
        evaluate.main(["predict", "--ckpt", ckpt, "--images", "no_such_folder", "--detector", detector_path,
                       "--output_dir", str(tmp_path)])


@requires_gpu
def test_predict_on_the_gpu_equals_the_cpu(setup, tmp_path) -> None:
    ckpt, detector_path, images = setup
    options = ["predict", "--ckpt", ckpt, "--images", images, "--detector", detector_path, "--runtime.batch_size", "4",
               "--runtime.precision", "64-true"]
    cpu = _rows(evaluate.main([*options, "--output_dir", str(tmp_path / "cpu"), "--runtime.accelerator", "cpu"]))
    gpu = _rows(evaluate.main([*options, "--output_dir", str(tmp_path / "gpu"), "--runtime.accelerator", "cuda"]))
    for a, b in zip(cpu, gpu, strict=True):
        assert [a[k] for k in ("index", "path", "predicted_class", "is_ood")] == \
               [b[k] for k in ("index", "path", "predicted_class", "is_ood")]
        assert float(a["odin"]) == pytest.approx(float(b["odin"]), abs=1e-9)


def test_predict_fails_closed(setup, tmp_path) -> None:
    """A detector tuned with other weights is refused (allowed with a warning that names both); a checkpoint with
    NaN weights stops with a message naming it instead of flagging every image in-distribution."""
    ckpt, detector_path, images = setup
    data = json.loads(Path(detector_path).read_text())
    data["tuned_on"] = {"weights_sha256": file_sha256(ckpt)}
    tuned = tmp_path / "tuned.json"
    tuned.write_text(json.dumps(data))
    checkpoint = torch.load(ckpt, weights_only=True)
    key = next(k for k, v in checkpoint["state_dict"].items() if v.is_floating_point() and v.dim() == 2)
    checkpoint["state_dict"][key] = checkpoint["state_dict"][key] * 0.5
    other = tmp_path / "other.ckpt"
    torch.save(checkpoint, other)
    args = ["predict", "--images", images, "--output_dir", str(tmp_path), "--runtime.accelerator", "cpu"]
    with pytest.raises(UserError, match=f"tuned with the weights of SHA-256 {file_sha256(ckpt)}, but the model's "
                                        f"weights have SHA-256 {file_sha256(other)}: .*--allow_other_weights true"):
        evaluate.main([*args, "--ckpt", str(other), "--detector", str(tuned)])
    with pytest.warns(UserWarning, match="used anyway"):
        assert evaluate.main([*args, "--ckpt", str(other), "--detector", str(tuned), "--allow_other_weights",
                              "true"]).is_file()
    checkpoint["state_dict"][key] = torch.full_like(checkpoint["state_dict"][key], float("nan"))
    broken = tmp_path / "nan.ckpt"
    torch.save(checkpoint, broken)
    with pytest.raises(NonFiniteScoresError, match=f"{broken}: prediction: the model gives non-finite scores"):
        evaluate.main([*args, "--ckpt", str(broken), "--detector", detector_path])


def test_prediction_csv_holds_any_file_name_as_text(tmp_path) -> None:
    """Before issue 29 a path starting with ``=``, ``+``, ``-`` or ``@`` was written as it is (a spreadsheet ran
    ``+SUM(1,2).png``), and a file name that is not valid UTF-8 crashed the writer after all scoring (no CSV)."""
    paths = ["+SUM(1,2).png", "=HYPERLINK(1).png", "-x.png", "@y.png", "ok.png", os.fsdecode(b"\xe9t\xe9.png")]
    n = len(paths)
    detections = Detection(predicted_class=torch.zeros(n, dtype=torch.long), baseline=torch.full((n,), 0.5),
                           score=torch.linspace(-1, 1, n), is_ood=torch.zeros(n, dtype=torch.bool))
    path = write_detections(tmp_path / "p.csv", detections, "odin", paths, ("zero",))
    rows = _rows(path)
    assert [row["path"] for row in rows] == ["'+SUM(1,2).png", "'=HYPERLINK(1).png", "'-x.png", "'@y.png", "ok.png",
                                             "\\xe9t\\xe9.png"]
    assert float(rows[0]["odin"]) == -1.0 and rows[0]["class_name"] == "zero"
