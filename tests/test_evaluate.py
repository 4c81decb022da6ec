"""evaluate.py: subcommands, config files, short spellings, modes, errors and processes.

The outputs' numbers are guarded by test_golden.py; these tests check what each form of the command does.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, interrupt_scoring, saved_scores
from PIL import Image

import evaluate
from odin_pl import fingerprint
from odin_pl.protocol import run as protocol_module
from odin_pl.errors import MissingFileError, NonFiniteScoresError, UserError
from odin_pl.fingerprint import tensors_sha256
from odin_pl.methods import score_batch
from odin_pl.metrics import METRIC_NAMES, ood_metrics
from odin_pl.evaluation.logs import run_metrics
from odin_pl.evaluation.options import TuningOptions

EVALUATE_CONFIGS = sorted(p for p in (REPO / "configs" / "evaluate").glob("*.yaml")
                          if not p.stem.startswith("openood_"))  # OpenOOD data: tests/test_openood_protocol.py
SMALL = ["--ood.num_images", "100", "--tuning.temperatures", "1,1000", "--tuning.epsilons", "0,0.002",
         "--bootstrap.resamples", "20", "--output.logger", "false"]


def _rows(result) -> list[dict]:
    """A protocol result's records as the result files write them."""
    return [record.to_dict() for record in result.records]


def test_evaluate_paper_protocol_writes_consistent_results(quickstart_ckpt: str, tmp_path) -> None:
    result = evaluate.main(["protocol", "--ckpt", quickstart_ckpt, "--output.dir", str(tmp_path), *SMALL,
                            "--ood.num_images", "120"]).result
    data = json.loads((tmp_path / "results.json").read_text())
    assert {(r["ood"], r["method"]) for r in data["records"]} == {
        (s, m) for s in ("gaussian", "uniform", "photos") for m in ("msp", "odin")}
    assert (tmp_path / "results.csv").read_text().count("\n") == 7
    assert "| gaussian |" in (tmp_path / "table.md").read_text()
    figures = {p.name for p in (tmp_path / "figures").iterdir()}
    assert {"roc_gaussian.png", "scores_photos.png", "grid_uniform.png"} <= figures and len(figures) == 9
    # The digits test set has 599 images: half of it tunes, and the note says so.
    assert data["splits"]["in_distribution"]["n_tune"] == 299 and any("half" in n for n in data["notes"])
    tune = set(data["splits"]["gaussian"]["tune_indices"])
    assert len(tune) == 60 and data["splits"]["gaussian"]["n_test"] == 60
    for record in _rows(result):
        assert record["n_in"] == 300 and record["n_out"] == 60
        assert all(0 <= record[k] <= 1 for k in ("fpr_at_95_tpr", "auroc", "aupr_in", "aupr_out"))
        if record["method"] == "msp":
            assert (record["temperature"], record["epsilon"]) == (1.0, 0.0)
        else:
            assert record["temperature"] in (1.0, 1000.0) and record["epsilon"] in (0.0, 0.002)
    # Metrics recomputed from the saved per-image scores agree with the records.
    odin = next(r for r in _rows(result) if r["ood"] == "uniform" and r["method"] == "odin")
    setting = (odin["temperature"], odin["epsilon"])
    s_in = saved_scores(tmp_path / "scores" / "in_distribution__test.pt", "odin", setting)
    s_out = saved_scores(tmp_path / "scores" / "uniform__test.pt", "odin", setting)
    assert ood_metrics(s_in, s_out) == {k: odin[k] for k in ood_metrics(s_in, s_out)}


def test_evaluate_fixed_and_transfer_modes(quickstart_ckpt: str, tmp_path) -> None:
    common = ["protocol", "--ckpt", quickstart_ckpt, "--ood.sets", "gaussian,uniform", *SMALL]
    fixed = evaluate.main([*common, "--output.dir", str(tmp_path / "f"), "--tuning.mode", "fixed",
                           "--tuning.temperature", "10", "--tuning.epsilon", "0.001"]).result
    assert all(r["temperature"] == 10 and r["epsilon"] == 0.001 for r in _rows(fixed) if r["method"] == "odin")
    transfer = evaluate.main([*common, "--output.dir", str(tmp_path / "t"), "--tuning.mode", "transfer",
                              "--tuning.tune_on", "noise", "--tuning.temperatures", "1,100",
                              "--tuning.epsilons", "0,0.001"]).result
    chosen = {(r["temperature"], r["epsilon"]) for r in _rows(transfer) if r["method"] == "odin"}
    assert len(chosen) == 1 and set(transfer.selections["odin"]) == {"noise"}
    # MSP is reported on identical test splits whatever the mode.
    msp = lambda res: {r["ood"]: r["auroc"] for r in _rows(res) if r["method"] == "msp"}  # noqa: E731
    assert msp(fixed) == msp(transfer)


def test_evaluate_cross_mode_reports_every_tuning_on_every_set(quickstart_ckpt: str, tmp_path) -> None:
    common = ["protocol", "--ckpt", quickstart_ckpt, "--ood.sets", "gaussian,uniform,photos", *SMALL]
    cross_run = evaluate.main([*common, "--output.dir", str(tmp_path / "c"), "--tuning.mode", "cross"])
    cross = cross_run.result
    paper = evaluate.main([*common, "--output.dir", str(tmp_path / "p")]).result
    odin = {(r["ood"], r["tuned_on"]): r for r in _rows(cross) if r["method"] == "odin"}
    assert len(odin) == 9
    for record in _rows(paper):  # the diagonal is the paper protocol's result
        key = (record["ood"], record["tuned_on"] if record["method"] == "odin" else None)
        match = odin[key] if record["method"] == "odin" else next(
            r for r in _rows(cross) if r["ood"] == record["ood"] and r["method"] == "msp")
        assert {k: match[k] for k in record} == record
    for (_, tuned_on), record in odin.items():  # off the diagonal: the tuning set's parameters
        chosen = cross.selections["odin"][tuned_on]
        assert (record["temperature"], record["epsilon"]) == chosen.setting
    assert "test set \\ tuned on" in (tmp_path / "c" / "table.md").read_text()
    # Logged metrics: one key per set, method and metric, from the set's own tuning (not the last one reported).
    logged = run_metrics(cross_run, {})
    main = [r for r in _rows(cross) if r["method"] == "msp" or r["tuned_on"] == r["ood"]]
    assert len(main) == 6 and logged == {f"eval/ood/{r['ood']}/{r['method']}/{k}": r[k] for r in main
                                         for k in r if k in METRIC_NAMES or "_ci_" in k}
    assert "eval/ood/photos/odin/auroc_diff_ci_low" in logged


def test_evaluate_on_a_folder_of_images_names_the_set_after_it(quickstart_ckpt: str, tmp_path) -> None:
    from PIL import Image

    folder = tmp_path / "my_images" / "nested"
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for i in range(12):
        pixels = (torch.rand(20, 30, 3, generator=g) * 255).byte().numpy()
        Image.fromarray(pixels).convert("RGBA" if i % 3 else "L").save(folder / f"{i}.png")
    result = evaluate.main(["--ckpt", quickstart_ckpt, "--output.dir", str(tmp_path / "out"), "--ood.sets",
                            str(tmp_path / "my_images"), "--tuning.mode", "fixed", "--tuning.temperature", "1000",
                            "--tuning.epsilon", "0.001", "--output.logger", "false"]).result
    assert {r["ood"] for r in _rows(result)} == {"my_images"}
    assert _rows(result)[0]["n_out"] == 6


def test_evaluate_errors_are_clear(quickstart_ckpt: str, tmp_path) -> None:
    out = ["--output.dir", str(tmp_path / "out"), "--output.logger", "false"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate.main(["--ckpt", str(tmp_path / "missing.ckpt"), *out])
    assert not (tmp_path / "out").exists()  # a run that cannot start leaves no folder behind
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        evaluate.main(["--ckpt", str(garbage), *out])
    with pytest.raises(ValueError, match="unknown OOD set 'nope'"):
        evaluate.main(["--ckpt", quickstart_ckpt, "--ood.sets", "nope", *out])
    with pytest.raises(ValueError, match="'fixed' needs both --tuning.temperature and --tuning.epsilon"):
        evaluate.main(["--ckpt", quickstart_ckpt, "--tuning.mode", "fixed", "--tuning.temperature", "10", *out])
    with pytest.raises(ValueError, match="parameters of mode 'fixed'"):
        evaluate.main(["protocol", "--ckpt", quickstart_ckpt, "--tuning.epsilon", "0.001", *out])
    with pytest.raises(ValueError, match="--tuning.tune_on SET goes with --tuning.mode transfer"):
        evaluate.main(["protocol", "--ckpt", quickstart_ckpt, "--tuning.mode", "transfer", *out])
    with pytest.raises(ValueError, match="tune_on='nope' is not one of the evaluated sets"):
        evaluate.main(["--ckpt", quickstart_ckpt, "--tuning.mode", "transfer", "--tuning.tune_on", "nope",
                       "--ood.sets", "uniform", *out])
    checkpoint = torch.load(quickstart_ckpt, weights_only=True)
    checkpoint["hyper_parameters"]["num_classes"] = 7  # the weights have a 10-way head
    mismatched = tmp_path / "mismatch.ckpt"
    torch.save(checkpoint, mismatched)
    with pytest.raises(ValueError, match="do not fit backbone 'hendrycks_mlp'"):
        evaluate.main(["--ckpt", str(mismatched), *out])
    # Checked before any work, naming the option (issue 17, item 4).
    with pytest.raises(ValueError, match="--seed must be >= 0, got -3"):
        evaluate.main(["--ckpt", quickstart_ckpt, "--seed", "-3", *out])
    with pytest.raises(ValueError, match="--tuning.epsilons is empty"):
        evaluate.main(["--ckpt", quickstart_ckpt, "--tuning.epsilons", "", *out])
    state_dict = tmp_path / "weights.pt"
    torch.save(torch.load(quickstart_ckpt, weights_only=True)["state_dict"], state_dict)
    with pytest.raises(ValueError, match="for a plain state_dict give --model NAME --weights FILE --data"):
        evaluate.main(["--ckpt", str(state_dict), *out])
    fresh = ["--output.dir", str(tmp_path / "fresh"), "--output.logger", "false"]
    for option, value, message in (("--tuning.n_tune", "-5", "--tuning.n_tune must be positive, got -5"),
                                   ("--runtime.batch_size", "0", "--runtime.batch_size must be >= 1, got 0"),
                                   ("--fit_images", "0", "--fit_images must be at least 1"),
                                   ("--fit_images", "10", "--fit_images sets the training images of the feature")):
        with pytest.raises(UserError, match=message):
            evaluate.main(["--ckpt", quickstart_ckpt, option, value, *fresh])
    assert not (tmp_path / "fresh").exists()  # all refused before any work
    (tmp_path / "one_image").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "one_image" / "x.png")
    with pytest.raises(UserError, match="a set of 1 image\\(s\\) cannot be split into tuning and test images"):
        evaluate.main(["--ckpt", quickstart_ckpt, "--ood.sets", str(tmp_path / "one_image"), *out])
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match="--output.dir .*a_file is a file"):
        evaluate.main(["--ckpt", quickstart_ckpt, "--output.dir", str(tmp_path / "a_file"), "--output.logger", "false"])


def test_evaluate_cli_runs_and_reports_errors(quickstart_ckpt: str, tmp_path) -> None:
    ok = subprocess.run([sys.executable, "evaluate.py", "--ckpt", quickstart_ckpt, "--output.dir", str(tmp_path),
                         "--ood.sets", "uniform", "--ood.num_images", "50", "--tuning.mode", "fixed",
                         "--tuning.temperature", "1000", "--tuning.epsilon", "0.0014", "--output.logger", "false"],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "| uniform |" in ok.stdout and (tmp_path / "results.json").exists()
    bad = subprocess.run([sys.executable, "evaluate.py", "--ckpt", str(tmp_path / "nope.ckpt")], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("evaluate.py: error: checkpoint") and "does not exist" in \
        bad.stderr


RESUMED = ["--ood.sets", "gaussian,uniform", *SMALL, "--ood.num_images", "400"]


def test_an_interrupted_evaluation_resumes_without_rescoring(quickstart_ckpt: str, tmp_path, capsys) -> None:
    out, scores = tmp_path / "resumed", tmp_path / "resumed" / "scores"
    command = [sys.executable, "evaluate.py", "protocol", "--ckpt", quickstart_ckpt, "--output.dir", str(out), *RESUMED]
    run = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (scores / "in_distribution__tune.pt").exists():
        assert run.poll() is None and time.monotonic() < deadline, "evaluate.py ended before writing scores"
        time.sleep(0.005)
    run.kill()
    run.wait()
    done = {p.name: p.stat().st_mtime_ns for p in scores.glob("*.pt")}
    assert not (out / "results.json").exists() and 1 <= len(done) < 6, done

    evaluate.main(["protocol", "--ckpt", quickstart_ckpt, "--output.dir", str(out), "--output.resume", "true",
                   *RESUMED])
    assert f"Resumed: reused {len(done)} saved score file(s)" in capsys.readouterr().out
    assert {name: (scores / name).stat().st_mtime_ns for name in done} == done  # not recomputed
    assert len(list(scores.glob("*.pt"))) == 6

    evaluate.main(["protocol", "--ckpt", quickstart_ckpt, "--output.dir", str(tmp_path / "uninterrupted"), *RESUMED])
    results = [json.loads((tmp_path / d / "results.json").read_text()) for d in ("resumed", "uninterrupted")]
    assert results[0]["records"] == results[1]["records"] and results[0]["tuning"] == results[1]["tuning"]
    assert (out / "table.md").read_text() == (tmp_path / "uninterrupted" / "table.md").read_text()
    for name in ("in_distribution__tune.pt", "uniform__test.pt"):
        resumed, uninterrupted = (torch.load(folder / name)["scores"] for folder in (scores, tmp_path /
                                                                                     "uninterrupted" / "scores"))
        assert resumed.keys() == uninterrupted.keys()
        assert all(torch.equal(resumed[m], uninterrupted[m]) for m in resumed)


def _not_read(path) -> str:
    raise AssertionError(f"{path} was hashed again")


def test_resume_reuses_only_score_files_that_prove_to_match(quickstart_ckpt: str, tmp_path, monkeypatch,
                                                            capsys) -> None:
    """A damaged score file, impossible scores and a folder whose image was replaced (same size, mtime set back)
    are scored again, each with a line that says why; an unchanged folder is not hashed again."""
    folder, out = tmp_path / "shapes", tmp_path / "run"
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (60, 8, 8, 3), dtype=np.uint8)
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(folder / f"{i:02}.bmp")
    monkeypatch.setattr(fingerprint, "RACY_SECONDS", 0.0)  # the images were written just now
    command = ["protocol", "--ckpt", quickstart_ckpt, "--output.dir", str(out), "--ood.sets", str(folder), *SMALL]
    first = evaluate.main(command)
    scores = out / "scores"
    damaged = scores / "in_distribution__tune.pt"
    content = bytearray(damaged.read_bytes())
    content[content.find(torch.load(damaged)["scores"]["odin"].numpy().tobytes()) + 3] ^= 0x01
    damaged.write_bytes(bytes(content))
    impossible = torch.load(scores / "in_distribution__test.pt")
    impossible["scores"]["msp"] = impossible["scores"]["msp"] + 1  # above MSP's 1, with a matching checksum
    impossible["scores_sha256"] = tensors_sha256(impossible["scores"])
    torch.save(impossible, scores / "in_distribution__test.pt")
    stat = os.stat(folder / "07.bmp")
    Image.fromarray(255 - pixels[7]).save(folder / "07.bmp")
    os.utime(folder / "07.bmp", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    capsys.readouterr()

    resumed = evaluate.main([*command, "--output.resume", "true"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.endswith("; scoring again")]
    changed = "its images changed since it was saved; scoring again"  # the passes' order: tuning splits first
    assert lines[0] == ("scores/in_distribution__tune.pt: its scores do not match the SHA-256 saved with them (the "
                        "file was damaged); scoring again")
    assert lines[1] == f"scores/shapes__tune.pt: {changed}" and lines[3] == f"scores/shapes__test.pt: {changed}"
    assert lines[2].startswith("scores/in_distribution__test.pt: its msp scores lie in [1.")
    assert lines[2].endswith("outside the method's range [0.1, 1]; scoring again") and len(lines) == 4
    assert resumed.reused_score_files == []
    assert torch.equal(torch.load(damaged)["scores"]["odin"], first.result.tuning_scores["odin"]["in_distribution"])

    monkeypatch.setattr(fingerprint, "file_sha256", _not_read)
    again = evaluate.main([*command, "--output.resume", "true"])
    assert len(again.reused_score_files) == 4 and again.result.records == resumed.result.records


def test_an_evaluation_stopped_inside_a_pass_resumes_from_its_chunks(quickstart_ckpt: str, tmp_path, monkeypatch,
                                                                     capsys) -> None:
    """Chunks of the in-distribution tuning pass saved before the stop are reused; the scores equal those of an
    uninterrupted run bit for bit, and the whole-pass files replace the chunks."""
    command = ["protocol", "--ckpt", quickstart_ckpt, "--ood.sets", "gaussian", *SMALL, "--runtime.batch_size", "64"]
    out, scores = tmp_path / "resumed", tmp_path / "resumed" / "scores"
    with monkeypatch.context() as patch:
        interrupt_scoring(patch, 3)
        with pytest.raises(RuntimeError, match="killed"):
            evaluate.main([*command, "--output.dir", str(out)])
    chunks = [f"in_distribution__tune.{a}-{a + 64}.pt" for a in (0, 64, 128)]
    assert sorted(p.name for p in scores.iterdir()) == sorted(chunks)
    capsys.readouterr()
    evaluate.main([*command, "--output.dir", str(out), "--output.resume", "true"])
    assert f"Resumed: reused 3 saved score file(s): {', '.join(chunks)}" in capsys.readouterr().out
    evaluate.main([*command, "--output.dir", str(tmp_path / "uninterrupted")])
    names = sorted(p.name for p in scores.iterdir())
    assert names == sorted(p.name for p in (tmp_path / "uninterrupted" / "scores").iterdir()) and len(names) == 4
    for name in names:
        resumed, uninterrupted = (torch.load(folder / name)["scores"] for folder in (scores, tmp_path /
                                                                                     "uninterrupted" / "scores"))
        assert resumed.keys() == uninterrupted.keys() and all(torch.equal(resumed[m], uninterrupted[m])
                                                              for m in resumed)


@pytest.mark.parametrize("config", EVALUATE_CONFIGS, ids=lambda p: p.stem)
def test_each_evaluate_config_runs_on_the_quickstart(config: Path, quickstart_ckpt: str, tmp_path) -> None:
    """Every file of configs/evaluate/ runs (on the quickstart, with a small grid) and records its mode."""
    run = evaluate.main(["protocol", "--config", str(config), "--ckpt", quickstart_ckpt, "--output.dir",
                         str(tmp_path), "--ood.sets", "gaussian,photos", *SMALL])
    expected = yaml.safe_load(config.read_text()).get("tuning", {}).get("mode", "paper")
    assert json.loads((tmp_path / "results.json").read_text())["mode"] == expected == run.mode
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())  # the resolved config, with absolute paths
    assert saved["tuning"]["mode"] == expected and saved["ckpt"] == str(Path(quickstart_ckpt).resolve())
    assert saved["output"]["dir"] == str(tmp_path.resolve()) and "config" not in saved


def test_the_saved_config_runs_the_same_evaluation_again(quickstart_ckpt: str, tmp_path) -> None:
    first = evaluate.main(["protocol", "--ckpt", quickstart_ckpt, "--output.dir", str(tmp_path / "a"),
                           "--ood.sets", "uniform", *SMALL])
    again = evaluate.main(["--config", str(tmp_path / "a" / "config.yaml"), "--output.dir", str(tmp_path / "b")])
    assert again.result.records == first.result.records


def test_print_config_shows_the_resolved_groups(quickstart_ckpt: str, capsys) -> None:
    with pytest.raises(SystemExit):
        evaluate.main(["protocol", "--config", str(REPO / "configs" / "evaluate" / "fixed.yaml"), "--ckpt",
                       quickstart_ckpt, "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["tuning"]["mode"] == "fixed" and printed["tuning"]["temperature"] == 1000
    assert set(printed) >= {"ckpt", "data", "ood", "tuning", "runtime", "output", "analyses"}


@pytest.mark.parametrize(("short", "full"), [
    (["--ckpt", "c"], ["protocol", "--ckpt", "c"]),
    (["--ckpt", "c", "--devices", "2", "--methods=msp,energy"],
     ["protocol", "--ckpt", "c", "--runtime.devices", "2", "--tuning.methods=msp,energy"]),
    (["--ckpt", "c", "--accelerator", "cpu", "--num_nodes=2", "--strategy", "ddp"],
     ["protocol", "--ckpt", "c", "--runtime.accelerator", "cpu", "--runtime.num_nodes=2", "--runtime.strategy",
      "ddp"]),
    (["--model", "m", "--dataset", "cifar10"], ["protocol", "--model", "m", "--data",
                                                "datamodules.cifar.CIFAR10DataModule"]),
    (["predict", "--dataset=digits", "--devices", "2"],
     ["predict", "--data", "datamodules.digits.DigitsDataModule", "--runtime.devices", "2"]),
    (["protocol", "--ood.sets", "a,b", "--seed", "3"], ["protocol", "--ood.sets", "a,b", "--seed", "3"]),
    (["analyses", "run", "--devices", "2"], ["analyses", "run", "--devices", "2"]),  # no shorthand there
])
def test_short_spellings_expand_to_the_full_options(short: list[str], full: list[str]) -> None:
    assert evaluate.expand_shorthands(short) == full


@pytest.mark.parametrize("old", [["--tune_on", "all"], ["--float64", "true"], ["--output_dir", "x"],
                                 ["--temperature", "10"], ["--runtime.device", "cpu"]])
def test_flat_options_of_earlier_versions_are_refused(quickstart_ckpt: str, old: list[str]) -> None:
    with pytest.raises((SystemExit, UserError)):  # an unrecognized argument
        evaluate.main(["--ckpt", quickstart_ckpt, *old])


def test_odin_shorthands_become_the_paper_methods_grid_and_parameters() -> None:
    options = TuningOptions(temperatures="1,10", epsilons=[0, 0.002])
    assert options.grids == {"odin": {"temperature": [1.0, 10.0], "epsilon": [0.0, 0.002]}} and options.params == []
    assert (options.temperatures, options.epsilons, options.temperature, options.epsilon) == (None,) * 4
    plan = options.plan(seed=3)
    assert plan.method("odin").settings == ((1.0, 0.0), (1.0, 0.002), (10.0, 0.0), (10.0, 0.002))
    assert plan.methods is options.method_grids and plan.seed == 3  # the grids are made once
    fixed = TuningOptions(mode="fixed", temperature=1000, epsilon=0.0014)
    assert fixed.fixed_params == {"odin": {"temperature": 1000.0, "epsilon": 0.0014}} and fixed.grids == {}
    assert fixed.plan(0).method("odin").fixed == (1000.0, 0.0014)
    # The same grid given both ways, or a parameter given twice, is refused.
    with pytest.raises(UserError, match="give odin's grid once"):
        TuningOptions(temperatures="1,10", grids={"odin": {"epsilon": [0.0]}})
    with pytest.raises(UserError, match="odin.temperature is given twice"):
        TuningOptions(mode="fixed", temperature=10, epsilon=0.0, params="odin.temperature=5")
    # A run without the paper's method ignores its shorthands, as before.
    assert TuningOptions(methods="msp,energy", temperatures="1,10").grids == {}


def test_an_unknown_dataset_name_is_refused() -> None:
    with pytest.raises(UserError, match="unknown in-distribution data set 'svhn'; use one of cifar10"):
        evaluate.expand_shorthands(["--model", "m", "--dataset", "svhn"])


def test_analyses_subcommand_on_a_finished_run_equals_analyses_during_the_protocol(quickstart_ckpt: str,
                                                                                   tmp_path) -> None:
    options = ["--ood.sets", "gaussian,photos", *SMALL, "--analyses.images", "40"]
    evaluate.main(["protocol", "--ckpt", quickstart_ckpt, "--output.dir", str(tmp_path / "with"), *options,
                   "--analyses.names", "sweeps,threshold,accuracy"])
    evaluate.main(["protocol", "--ckpt", quickstart_ckpt, "--output.dir", str(tmp_path / "later"), *options])
    scores = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "later" / "scores").iterdir()}
    outputs = evaluate.main(["analyses", str(tmp_path / "later"), "--analyses.names", "sweeps,threshold,accuracy",
                             "--analyses.images", "40"])
    assert list(outputs) == ["sweeps", "threshold", "accuracy"]
    for name in outputs:
        assert (json.loads((tmp_path / "later" / "analyses" / f"{name}.json").read_text())
                == json.loads((tmp_path / "with" / "analyses" / f"{name}.json").read_text()))
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "later" / "scores").iterdir()} == scores  # no rescoring
    with pytest.raises(FileNotFoundError, match="config.yaml does not exist"):
        evaluate.main(["analyses", str(tmp_path / "nothing_here"), "--analyses.names", "sweeps"])
    (tmp_path / "later" / "scores" / "photos__test.pt").unlink()
    with pytest.raises(ValueError, match="photos__test.pt: it is missing; run the protocol"):
        evaluate.main(["analyses", str(tmp_path / "later"), "--analyses.names", "sweeps"])


LOGIT_METHODS = ["--methods", "msp,odin,energy,maxlogit,entropy",
                 "--tuning.grids", '{"energy": {"temperature": [1, 10]}}']


def test_protocol_with_every_logit_method(quickstart_ckpt: str, tmp_path) -> None:
    """Five methods on the same splits: MSP and ODIN as in a default run, Energy tuned by the same rule, every
    record recomputable from the saved scores, one detector per tuning or fixed method, the methods table."""
    common = ["protocol", "--ckpt", quickstart_ckpt, "--ood.sets", "gaussian,photos", *SMALL]
    default = evaluate.main([*common, "--output.dir", str(tmp_path / "default")])
    run = evaluate.main([*common, *LOGIT_METHODS, "--output.dir", str(tmp_path / "all")])
    by_method = {m: [r for r in _rows(run.result) if r["method"] == m] for m in ("msp", "odin", "energy")}
    assert [r for r in _rows(run.result) if r["method"] in ("msp", "odin")] == _rows(default.result)
    assert sorted(r["method"] for r in _rows(run.result) if r["ood"] == "gaussian") == sorted(
        ["msp", "odin", "energy", "maxlogit", "entropy"])
    for record in by_method["energy"]:
        selection = run.result.selections["energy"][record["ood"]]
        assert record["tuned_on"] == record["ood"] and record["temperature"] == selection.params["temperature"]
        folder = tmp_path / "all" / "scores"
        setting = (record["temperature"],)
        metrics = ood_metrics(saved_scores(folder / "in_distribution__test.pt", "energy", setting),
                              saved_scores(folder / f"{record['ood']}__test.pt", "energy", setting))
        assert metrics == {k: record[k] for k in metrics}
    table = (tmp_path / "all" / "table.md").read_text()
    assert "| method | gaussian | photos |" in table and "| entropy |" in table and "baseline (MSP" not in table
    results = json.loads((tmp_path / "all" / "results.json").read_text())
    assert results["methods"] == ["msp", "odin", "energy", "maxlogit", "entropy"]
    assert set(results["selections"]) == {"odin", "energy"} and results["grids"]["energy"] == [[1.0], [10.0]]
    assert sorted(p.name for p in (tmp_path / "all" / "detectors").iterdir()) == [
        "fixed.entropy.json", "fixed.maxlogit.json", "fixed.msp.json", "gaussian.energy.json", "gaussian.odin.json",
        "photos.energy.json", "photos.odin.json"]
    rows = evaluate.main(["predict", "--ckpt", quickstart_ckpt, "--images", "gaussian", "--num_images", "20",
                          "--detector", str(tmp_path / "all" / "detectors" / "gaussian.energy.json"),
                          "--output_dir", str(tmp_path / "predict")]).read_text().splitlines()
    assert rows[0] == "index,path,predicted_class,class_name,msp,energy,is_ood" and len(rows) == 21


def test_method_parameters_on_the_command_line(quickstart_ckpt: str, tmp_path) -> None:
    common = ["protocol", "--ckpt", quickstart_ckpt, "--ood.sets", "gaussian", *SMALL, "--methods", "msp,energy"]
    fixed_by_params = evaluate.main([*common, "--params", "energy.temperature=10", "--output.dir",
                                     str(tmp_path / "a")]).result
    energy = [r for r in _rows(fixed_by_params) if r["method"] == "energy"]
    assert [(r["temperature"], r["tuned_on"]) for r in energy] == [(10.0, None)] and not fixed_by_params.selections
    fixed_mode = evaluate.main([*common, "--tuning.mode", "fixed", "--output.dir", str(tmp_path / "b")]).result
    assert [r["temperature"] for r in _rows(fixed_mode) if r["method"] == "energy"] == [1.0]  # the paper's T
    with pytest.raises(ValueError, match="unknown or no method \\(nope\\)"):
        evaluate.main([*common[:-1], "msp,nope", "--output.dir", str(tmp_path / "c")])
    with pytest.raises(ValueError, match="'odin' is not among --tuning.methods"):
        evaluate.main([*common, "--params", "odin.temperature=10", "--output.dir", str(tmp_path / "c")])
    with pytest.raises(ValueError, match="'sweeps' studies ODIN's T and epsilon and needs the method\\(s\\) odin"):
        evaluate.main([*common, "--analyses.names", "sweeps", "--output.dir", str(tmp_path / "c")])
    assert not (tmp_path / "c").exists()


def test_user_errors_are_one_line_bugs_keep_their_traceback(quickstart_ckpt: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """A UserError is `evaluate.py: error: ...` and status 2; --debug shows its traceback instead; any other
    exception (a bug) propagates with its traceback."""
    missing = ["evaluate.py", "--ckpt", str(tmp_path / "missing.ckpt")]
    monkeypatch.setattr(sys, "argv", missing)
    assert evaluate.run_command_line() == 2
    assert capsys.readouterr().err.startswith("evaluate.py: error: checkpoint")
    monkeypatch.setattr(sys, "argv", [*missing, "--debug"])
    with pytest.raises(MissingFileError, match="does not exist"):
        evaluate.run_command_line()

    def bug(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(evaluate, "protocol", bug)
    monkeypatch.setattr(sys, "argv", ["evaluate.py", "--ckpt", quickstart_ckpt, "--output.dir", str(tmp_path / "o"),
                                      "--output.logger", "false"])
    with pytest.raises(KeyError, match="a bug"):
        evaluate.run_command_line()


def test_debug_shows_the_traceback_from_the_shell(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "evaluate.py", "--ckpt", str(tmp_path / "nope.ckpt"), "--debug"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "Traceback" in run.stderr and "MissingFileError" in run.stderr


def test_nan_weights_stop_the_protocol_at_the_first_batch(quickstart_ckpt: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint = torch.load(quickstart_ckpt, weights_only=True)
    key = next(k for k, v in checkpoint["state_dict"].items() if v.is_floating_point() and v.dim() == 2)
    checkpoint["state_dict"][key] = torch.full_like(checkpoint["state_dict"][key], float("nan"))
    broken = tmp_path / "nan.ckpt"
    torch.save(checkpoint, broken)
    batches = []

    def counted(*args, **kwargs):
        batches.append(1)
        return score_batch(*args, **kwargs)

    monkeypatch.setattr(protocol_module, "score_batch", counted)
    with pytest.raises(NonFiniteScoresError, match=f"{broken}: in_distribution/tune .*non-finite scores"):
        evaluate.main(["--ckpt", str(broken), "--output.dir", str(tmp_path / "out"), "--output.logger", "false"])
    assert len(batches) == 1


def test_a_reused_output_folder_needs_overwrite_and_keeps_nothing_of_the_earlier_run(quickstart_ckpt: str,
                                                                                      tmp_path: Path,
                                                                                      capsys) -> None:
    """A run into an earlier run's folder is refused unless ``--output.overwrite true`` (issue 28), which touches
    nothing; before issue 29 an overwriting run left the earlier run's ``detectors/<set>.json`` and figures of
    the sets it no longer evaluates beside its own results. Also: a folder named ``=1+1`` is no formula in
    results.csv, its images with names that are not UTF-8 all count (6 images: 3 tune, 3 test), and config.yaml
    is written through the atomic writer."""
    folder = tmp_path / "=1+1"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for name in (b"a.png", b"b.png", b"c.png", b"\xe9.png", b"\xff1.png", b"\xff2.png"):
        pixels = (torch.rand(8, 8, generator=g) * 255).byte().numpy()
        Image.fromarray(pixels).save(os.fsdecode(bytes(folder) + b"/" + name))
    out = tmp_path / "out"
    common = ["protocol", "--ckpt", quickstart_ckpt, "--output.dir", str(out), "--tuning.temperatures", "1,1000",
              "--tuning.epsilons", "0,0.001", "--ood.num_images", "40", "--output.logger", "false",
              "--bootstrap.resamples", "0"]
    first = evaluate.main([*common, "--ood.sets", f"gaussian,{folder}"]).result
    assert {r.ood: r.n_out for r in first.records} == {"gaussian": 20, "=1+1": 3}
    assert "'=1+1" in (out / "results.csv").read_text()
    figures = ["grid_{}.png", "roc_{}.png", "scores_{}.png"]
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(f.format(s) for s in ("=1+1", "gaussian")
                                                                         for f in figures)
    assert sorted(p.name for p in (out / "detectors").iterdir()) == ["=1+1.odin.json", "fixed.msp.json",
                                                                     "gaussian.odin.json"]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(UserError, match=re.escape(
            f"{out} holds an earlier evaluation (results.json, scores): continue it with "
            "--output.resume true, evaluate into another folder with --output.dir DIR, or replace it with "
            "--output.overwrite true")):
        evaluate.main([*common, "--ood.sets", "gaussian"])
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    capsys.readouterr()
    evaluate.main([*common, "--ood.sets", "gaussian", "--output.overwrite", "true"])
    assert f"--output.overwrite true: the earlier evaluation in {out} is replaced" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "figures").iterdir()) == [f.format("gaussian") for f in figures]
    assert sorted(p.name for p in (out / "detectors").iterdir()) == ["fixed.msp.json", "gaussian.odin.json"]
    assert yaml.safe_load((out / "config.yaml").read_text())["ood"]["sets"] == "gaussian"


PARSE_ERRORS = [
    (["--ckpt", "c", "--runtime.batch_sise", "3"],
     "--runtime.batch_sise: unknown option (did you mean --runtime.batch_size?) (see --help)"),
    (["--ckpt", "c", "--runtime.batch_size", "nan"], "--runtime.batch_size: expected int, got 'nan'"),
    (["--ckpt", "c", "--seed=1.5"], "--seed: expected int, got '1.5'"),
    (["--ckpt", "c", "--tuning.mode", "crosss"],
     "--tuning.mode: must be one of paper, transfer, cross, fixed, openood, paper,openood, transfer,openood, "
     "cross,openood, fixed,openood, got 'crosss' (did you mean cross?)"),
    (["--ckpt", "c", "--output.resume", "maybe"], "--output.resume: expected bool, got 'maybe'"),
    (["--config", "{tmp}/unknown_key.yaml"], "--config: unknown key 'runtime.batch_sise' (did you mean "
                                             "runtime.batch_size?)"),
    (["--config", "{tmp}/malformed.yaml"], "--config: the file is not valid YAML or JSON (while parsing a flow node"),
    (["--config", "{tmp}/missing.yaml"], "--config: File does not exist: '{tmp}/missing.yaml'"),
    (["protocl", "--ckpt", "c"], "unexpected argument(s) protocl (did you mean protocol?) (see --help)"),
    (["aggregate", "a", "b"], "missing required option(s): --output"),
    (["predict", "--ckpt", "c", "--detectr", "d"], "--detectr: unknown option (did you mean --detector?)"),
    (["--ckpt"], "--ckpt: expected one argument"),
]


@pytest.mark.parametrize("argv, expected", PARSE_ERRORS)
def test_every_parse_error_is_one_line_naming_the_option(argv: list[str], expected: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Before issue 29 each of these printed jsonargparse's 47-54 line usage dump before its message."""
    (tmp_path / "unknown_key.yaml").write_text("runtime:\n  batch_sise: 3\n")
    (tmp_path / "malformed.yaml").write_text("runtime: [\n")
    monkeypatch.setattr(sys, "argv", ["evaluate.py", *(a.format(tmp=tmp_path) for a in argv)])
    assert evaluate.run_command_line() == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"evaluate.py: error: {expected.format(tmp=tmp_path)}"), err
    monkeypatch.setenv("RANK", "1")  # a launched run's other processes: process 0 alone says it
    assert evaluate.run_command_line() == 2 and capsys.readouterr().err == ""


def test_negative_num_workers_is_refused_by_name(tmp_path: Path) -> None:
    """Before issue 29 a negative --runtime.num_workers reached PyTorch's DataLoader: a raw traceback."""
    with pytest.raises(UserError, match=r"--runtime.num_workers must be >= 0 .*got -2"):
        evaluate.main(["--ckpt", str(tmp_path / "c.ckpt"), "--runtime.num_workers", "-2"])
