"""ODINDetector: threshold at a target TPR, predictions from one pass, JSON save/load, evaluate's detector files;
a fitted method's detector and its fit file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, saved_scores
from feature_nets import N_CLASSES, images, labels, make_fits, tiny_net
from torch import nn

import evaluate
from datamodules import build_ood_dataset
from odin_pl import Detector, ODINDetector, msp_score, odin_score
from odin_pl.training.checkpoint import load_model, read_checkpoint
from odin_pl.errors import NonFiniteScoresError, UserError
from odin_pl.protocol.fits import save_fit
from odin_pl.methods import score_batch
from odin_pl.metrics import rates_at_tpr, threshold_at_tpr
from odin_pl.spec import ImageSpec

SPEC = ImageSpec(size=4, channels=2, mean=(0.5, 0.4), std=(0.25, 0.5), class_names=("a", "b", "c"), dataset="toy")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3)).double().eval()


def _images(n: int = 23, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 2, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("tpr", [0.95, 0.9, 0.5, 1.0])
def test_threshold_keeps_the_target_tpr_as_the_metric_defines_it(tpr: float) -> None:
    fractions = torch.tensor([0.3, 0.9, 0.5, 0.5, 0.5, 0.7, 0.1, 0.8, 0.5, 0.2, 0.6, 0.4, 0.9, 0.35, 0.5, 0.45, 0.55,
                              0.65, 0.75, 0.85], dtype=torch.float64)  # ties included
    scores = 1 / 3 + 2 / 3 * fractions  # within ODIN's range [1/N, 1] for N = 3 classes
    detector = ODINDetector.from_scores(_model(), 10.0, 0.001, SPEC, scores, tpr=tpr)
    assert detector.threshold == threshold_at_tpr(scores, tpr) == rates_at_tpr(scores, scores, tpr)[2]
    assert (scores >= detector.threshold).double().mean() >= tpr
    higher = scores[scores > detector.threshold]  # the next larger threshold loses the target
    if len(higher):
        assert (scores >= higher.min()).double().mean() < tpr
    with pytest.raises(ValueError, match="empty"):
        detector.fit_threshold(torch.tensor([]))


@pytest.mark.parametrize("epsilon", [0.0, 0.002])
def test_predict_matches_the_scoring_functions(epsilon: float) -> None:
    model, x = _model(), _images()
    in_scores = odin_score(model, _images(50, seed=2), 100.0, epsilon, SPEC.std)
    detector = ODINDetector.from_scores(model, 100.0, epsilon, SPEC, in_scores)
    with torch.inference_mode():  # as in Lightning's predict loop
        detection = detector.predict_all(x)
        is_ood, predicted = detector.predict(x)
    expected = odin_score(model, x, 100.0, epsilon, SPEC.std)
    assert torch.equal(detection.score, expected) and torch.equal(detector.score(x), expected)
    assert torch.equal(detection.baseline, msp_score(model, x))
    assert torch.equal(predicted, model(x).argmax(dim=1)) and torch.equal(detection.predicted_class, predicted)
    assert torch.equal(is_ood, expected < detector.threshold) and 0 < int(is_ood.sum()) < len(x)


def test_predict_runs_one_forward_pass_on_the_clean_images() -> None:
    model, calls = _model(), []
    model.register_forward_hook(lambda module, args, output: calls.append(len(args[0])))
    detector = ODINDetector(model, 100.0, 0.002, SPEC, threshold=0.5)
    detector.predict(_images(7))
    assert calls == [7, 7]  # the clean batch, then the perturbed one
    calls.clear()
    ODINDetector(model, 100.0, 0.0, SPEC, threshold=0.5).predict(_images(7))
    assert calls == [7]


def test_save_and_load_round_trip_and_errors(tmp_path) -> None:
    model = _model()
    detector = ODINDetector(model, 1000.0, 0.0014, SPEC, threshold=0.723456789012345, tpr=0.9,
                            tuned_on={"ood_set": "gaussian", "seed": 3})
    path = detector.save(tmp_path / "d" / "detector.json")
    data = json.loads(path.read_text())
    assert data["format"] == "odin_pl.detector" and data["format_version"] == 2 and data["odin_pl_version"]
    assert data["method"] == "odin" and data["params"] == {"temperature": 1000.0, "epsilon": 0.0014}
    assert data["input_spec"]["std"] == [0.25, 0.5] and data["tuned_on"] == {"ood_set": "gaussian", "seed": 3}
    loaded = ODINDetector.load(path, model)
    assert (loaded.temperature, loaded.epsilon, loaded.threshold, loaded.tpr) == (1000.0, 0.0014, 0.723456789012345,
                                                                                  0.9)
    assert loaded.input_spec == SPEC and loaded.tuned_on == detector.tuned_on
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ODINDetector.load(tmp_path / "missing.json", model)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON"):
        ODINDetector.load(tmp_path / "bad.json", model)
    (tmp_path / "other.json").write_text(json.dumps({"temperature": 1}))
    with pytest.raises(ValueError, match="not an odin_pl detector file"):
        ODINDetector.load(tmp_path / "other.json", model)
    (tmp_path / "v3.json").write_text(json.dumps({**data, "format_version": 3}))
    with pytest.raises(ValueError, match="format version 3"):
        ODINDetector.load(tmp_path / "v3.json", model)
    # Format version 1 (ODIN's temperature and epsilon, before the method registry; never released) is refused.
    version1 = {**{k: v for k, v in data.items() if k not in ("method", "params")}, "format_version": 1,
                "temperature": 1000.0, "epsilon": 0.0014}
    (tmp_path / "v1.json").write_text(json.dumps(version1))
    with pytest.raises(ValueError, match="format version 1; this odin_pl reads version 2"):
        ODINDetector.load(tmp_path / "v1.json", model)
    (tmp_path / "energy.json").write_text(json.dumps({**data, "method": "energy", "params": {"epsilon": 0.1}}))
    with pytest.raises(ValueError, match=r"method 'energy' takes the parameters \(temperature\)"):
        Detector.load(tmp_path / "energy.json", model)
    (tmp_path / "energy.json").write_text(json.dumps({**data, "method": "energy", "params": {"temperature": 1}}))
    assert Detector.load(tmp_path / "energy.json", model).setting == (1.0,)
    with pytest.raises(ValueError, match="method 'energy', not of the paper's \\(odin\\): load it with Detector.load"):
        ODINDetector.load(tmp_path / "energy.json", model)
    (tmp_path / "partial.json").write_text(json.dumps({k: v for k, v in data.items() if k != "threshold"}))
    with pytest.raises(ValueError, match="lacks the field 'threshold'"):
        ODINDetector.load(tmp_path / "partial.json", model)
    four_classes = nn.Sequential(nn.Flatten(), nn.Linear(32, 4)).double().eval()
    with pytest.raises(ValueError, match="4 logits but the detector was tuned for 3 classes"):
        ODINDetector.load(path, four_classes).predict(_images(2))


def test_a_fitted_method_s_detector_needs_its_own_fit_and_keeps_it_across_save_and_load(tmp_path) -> None:
    model, x_train, y_train = tiny_net(), images(60, 4), labels(60)
    spec = ImageSpec(size=4, channels=3, mean=(0.0,) * 3, std=(0.5, 0.25, 2.0),
                     class_names=tuple(map(str, range(N_CLASSES))))
    fits = make_fits(model, x_train, y_train, {"knn": [(10.0,)], "react": [(90.0,)]})
    knn = save_fit(tmp_path / "fits" / "knn.pt", "knn", [(10.0,)], {"weights_sha256": "w"}, fits.of("knn"))
    detector = Detector(model, "knn", {"k": 10}, spec, threshold=-0.5, fit=knn)
    x = images(5, 9)
    expected = score_batch(model, x, {"knn": [(10.0,)]}, spec.std, fits=fits)["knn"][0]
    assert torch.equal(detector.score(x), expected)
    path = detector.save(tmp_path / "detectors" / "knn.json")
    assert json.loads(path.read_text())["fit"] == {"file": "../fits/knn.pt", "sha256": knn.sha256}
    assert torch.equal(Detector.load(path, model, weights_sha256="w").score(x), expected)
    with pytest.raises(ValueError, match="method 'knn' scores with a fit on the training images: pass fit="):
        Detector(model, "knn", {"k": 10}, spec, threshold=-0.5)
    with pytest.raises(ValueError, match="the fit file .*knn.pt is the fit of 'knn', not of 'react'"):
        Detector(model, "react", {"percentile": 90}, spec, threshold=0.0, fit=knn)
    with pytest.raises(ValueError, match="k = 61 is larger than the feature bank \\(60 training images\\)"):
        Detector(model, "knn", {"k": 61}, spec, threshold=-0.5, fit=knn)
    with pytest.raises(ValueError, match="method 'msp' needs no fit"):
        Detector(model, "msp", {}, spec, threshold=0.5, fit=knn)


def test_load_rejects_a_model_of_another_spec_or_class_count(quickstart_ckpt: str, tmp_path) -> None:
    model = load_model(read_checkpoint(quickstart_ckpt))
    spec = model.image_spec
    path = ODINDetector(model, 10.0, 0.001, spec, threshold=0.5).save(tmp_path / "d.json")
    data = json.loads(path.read_text())
    data["input_spec"]["std"] = [0.5]
    (tmp_path / "std.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="image spec does not match.*std"):
        ODINDetector.load(tmp_path / "std.json", model)
    data["input_spec"] = {**spec.to_dict(), "class_names": ["0", "1"]}
    (tmp_path / "classes.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="10 classes but the detector was tuned for 2"):
        ODINDetector.load(tmp_path / "classes.json", model)


_RELOAD = """
import json, sys, torch
from datamodules import build_ood_dataset
from odin_pl import ODINDetector
from odin_pl.training.checkpoint import load_model, read_checkpoint
model = load_model(read_checkpoint(sys.argv[1]))
detector = ODINDetector.load(sys.argv[2], model)
ood = build_ood_dataset("gaussian", model.image_spec, num_images=100)
x = torch.stack([ood[i][0] for i in range(40)])
is_ood, predicted = detector.predict(x)
print(json.dumps({"scores": detector.score(x).tolist(), "is_ood": is_ood.tolist(), "class": predicted.tolist()}))
"""


def test_evaluate_writes_detectors_that_reproduce_the_results_in_a_fresh_process(quickstart_ckpt: str,
                                                                                  tmp_path) -> None:
    result = evaluate.main(["protocol", "--ckpt", quickstart_ckpt, "--output.dir", str(tmp_path), "--ood.sets",
                            "gaussian,uniform", "--ood.num_images", "100", "--tuning.temperatures", "1,1000",
                            "--tuning.epsilons", "0,0.002", "--output.logger", "false"]).result
    assert sorted(p.name for p in (tmp_path / "detectors").iterdir()) == ["fixed.msp.json", "gaussian.odin.json",
                                                                          "uniform.odin.json"]
    model = load_model(read_checkpoint(quickstart_ckpt))
    for name in ("gaussian", "uniform"):
        detector = ODINDetector.load(tmp_path / "detectors" / f"{name}.odin.json", model)
        record = next(r for r in result.records if r.ood == name and r.method == "odin")
        setting = record.setting
        assert (detector.temperature, detector.epsilon) == setting and detector.tuned_on["ood_set"] == name
        assert detector.tuned_on["threshold_split"] == "in_distribution/test"
        # The threshold is the test split's 95%-TPR threshold, so the flags reproduce the reported FPR.
        s_in = saved_scores(tmp_path / "scores" / "in_distribution__test.pt", "odin", setting)
        s_out = saved_scores(tmp_path / "scores" / f"{name}__test.pt", "odin", setting)
        assert detector.threshold == threshold_at_tpr(s_in.double(), 0.95)
        assert float((s_out >= detector.threshold).double().mean()) == record.metrics["fpr_at_95_tpr"]
    # A fresh process gives the same scores and flags on the same images.
    path = tmp_path / "detectors" / "gaussian.odin.json"
    fresh = subprocess.run([sys.executable, "-c", _RELOAD, quickstart_ckpt, str(path)], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr
    reloaded = json.loads(fresh.stdout.strip().splitlines()[-1])
    detector = ODINDetector.load(path, model)
    ood = build_ood_dataset("gaussian", model.image_spec, num_images=100)
    x = torch.stack([ood[i][0] for i in range(40)])
    is_ood, predicted = detector.predict(x)
    torch.testing.assert_close(torch.tensor(reloaded["scores"]), detector.score(x), rtol=1e-6, atol=1e-7)
    assert reloaded["is_ood"] == is_ood.tolist() and reloaded["class"] == predicted.tolist()


def test_a_detector_refuses_a_threshold_or_tpr_it_cannot_mean() -> None:
    """Finite thresholds within the method's score range ([1/3, 1] for ODIN with 3 classes, up to 4 float32 ulps),
    tpr in (0, 1]: a damaged detector file is refused at load with the same message."""
    model = _model()
    assert ODINDetector(model, 10.0, 0.0, SPEC, threshold=1.0 + 2e-7).threshold == 1.0 + 2e-7
    for threshold in (0.2, 1.01, float("nan"), float("inf")):
        with pytest.raises(UserError, match=r"threshold .* not a finite number in its score range \[0.333"):
            ODINDetector(model, 10.0, 0.0, SPEC, threshold=threshold)
    for tpr in (0.0, 1.5, float("nan")):
        with pytest.raises(UserError, match=r"tpr must be in \(0, 1\]"):
            Detector(model, "energy", [1.0], SPEC, threshold=3.0, tpr=tpr)
    assert Detector(model, "energy", [1.0], SPEC, threshold=-1e6).threshold == -1e6  # energy: any finite value


def test_a_detector_file_fails_closed(tmp_path: Path) -> None:
    """A hand-edited threshold, a detector tuned with other weights (refused, or with allow_other_weights a
    warning naming both) and non-finite scores (NaN weights) are not turned into decisions."""
    model = _model()
    in_scores = odin_score(model, _images(30, seed=3), 10.0, 0.001, SPEC.std)
    path = ODINDetector.from_scores(model, 10.0, 0.001, SPEC, in_scores,
                                    tuned_on={"weights_sha256": "a" * 64}).save(tmp_path / "d.json")
    edited = json.loads(path.read_text())
    edited["threshold"] = float("nan")
    (tmp_path / "nan.json").write_text(json.dumps(edited))
    with pytest.raises(UserError, match="threshold nan of a odin detector"):
        Detector.load(tmp_path / "nan.json", model)
    assert Detector.load(path, model, weights_sha256="a" * 64).threshold == json.loads(path.read_text())["threshold"]
    with pytest.raises(UserError, match=f"tuned with the weights of SHA-256 {'a' * 64}, but the model's weights "
                                        f"have SHA-256 {'b' * 64}: .*--allow_other_weights true"):
        Detector.load(path, model, weights_sha256="b" * 64)
    with pytest.warns(UserWarning, match=f"SHA-256 {'a' * 64}.*SHA-256 {'b' * 64}; used anyway"):
        Detector.load(path, model, weights_sha256="b" * 64, allow_other_weights=True)
    broken = _model()
    with torch.no_grad():
        broken[1].weight[0, 0] = float("nan")
    detector = Detector.load(path, broken)
    with pytest.raises(NonFiniteScoresError, match=r"prediction: the model gives non-finite scores \(NaN or Inf\): "
                                                   r"23 of odin"):
        detector.predict(_images())


def test_a_detector_file_that_names_no_weights_warns_and_text_thresholds_are_refused(tmp_path: Path) -> None:
    """Before issue 29 a detector file without ``tuned_on.weights_sha256`` was used with any weights without a
    word (its threshold may not hold for them), and a threshold that is not a number was a raw ValueError."""
    model = _model()
    in_scores = odin_score(model, _images(30, seed=3), 10.0, 0.001, SPEC.std)
    path = ODINDetector.from_scores(model, 10.0, 0.001, SPEC, in_scores,
                                    tuned_on={"ood_set": "x"}).save(tmp_path / "d.json")
    with pytest.warns(UserWarning, match=r"d.json records no tuned_on.weights_sha256, so it cannot be checked "
                                         f"against these weights \\(SHA-256 {'c' * 64}\\)"):
        assert Detector.load(path, model, weights_sha256="c" * 64).threshold > 0
    edited = {**json.loads(path.read_text()), "threshold": "abc"}  # before issue 29: a raw ValueError from float()
    (tmp_path / "text.json").write_text(json.dumps(edited))
    with pytest.raises(UserError, match=r"the threshold \('abc'\) and tpr \(0.95\) of a detector must be numbers"):
        Detector.load(tmp_path / "text.json", model)
