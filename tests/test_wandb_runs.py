"""The W&B runs of the quickstart's train, evaluate, bootstrap, aggregate and resumed train, logged offline and read
back from their ``.wandb`` records (tests/wandb_records.py): names, groups, job types, config, summary, artifacts
and the evaluation's reference to the checkpoint it measured. The only test with W&B on (conftest.py disables it)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from wandb_records import offline_runs

import evaluate
import train
from odin_pl.training.checkpoint import training_record
from odin_pl.fingerprint import file_sha256
from odin_pl.metrics import METRIC_NAMES

SETS = ("gaussian", "uniform", "photos")
CHILD = "ODIN_PL_WANDB_TEST_CHILD"  # set in the fresh interpreter that runs the checks


def fresh_environment() -> dict[str, str]:
    """This process's environment without what W&B left in it (e.g. the address of its service)."""
    return {key: value for key, value in os.environ.items() if not key.lstrip("_").upper().startswith("WANDB")}


def test_the_runs_are_checked_in_a_fresh_interpreter(tmp_path: Path) -> None:
    """W&B keeps one service and its settings per process (``wandb.setup``); after the other tests' runs with W&B
    disabled in this process, a new offline run could end before writing its ``.wandb`` file (seen after
    tests/test_train.py). A user's train.py and evaluate.py are fresh processes, so the checks below run in one,
    without the W&B variables this process holds."""
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp",
                             str(tmp_path / "child"), f"{__file__}::test_quickstart_runs_are_named_grouped_and_linked"],
                            env={**fresh_environment(), CHILD: "1"}, cwd=Path(__file__).resolve().parents[1],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout[-4000:] + result.stderr[-2000:]


@pytest.fixture
def offline_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """W&B offline, its staging and cache folders in ``tmp_path``, which is the working folder."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    for variable in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / "wandb_home" / variable.lower()))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.skipif(not os.environ.get(CHILD), reason="run by test_the_runs_are_checked_in_a_fresh_interpreter")
def test_quickstart_runs_are_named_grouped_and_linked(offline_wandb: Path) -> None:
    ckpt = train.main(["--trainer.max_epochs", "2", "--trainer.callbacks.every_n_epochs=2",
                       "--trainer.callbacks.num_images=200"])
    evaluation = ["--ckpt", ckpt, "--ood.num_images", "200", "--tuning.temperatures", "1,1000",
                  "--tuning.epsilons", "0,0.002"]
    evaluate.main(evaluation)
    other = offline_wandb / "other"
    evaluate.main([*evaluation, "--output.dir", str(other), "--seed", "1", "--methods", "msp,odin,energy",
                   "--ood.sets", "gaussian", "--logger.tag", "try2", "--bootstrap.resamples", "0"])
    [trained] = offline_runs(offline_wandb / "runs" / "quickstart" / "wandb")
    [evaluated] = offline_runs(offline_wandb / "runs" / "quickstart" / "evaluation" / "wandb")
    [second] = offline_runs(other / "wandb")

    # Training: named after experiment and seed, grouped by experiment, the whole resolved config.
    run_id = trained.run.run_id
    assert (trained.run.display_name, trained.run.run_group, trained.run.job_type) == ("quickstart-seed0",
                                                                                      "quickstart", "train")
    config = trained.config
    assert config["seed_everything"] == 0 and config["experiment"] == "quickstart"
    assert config["trainer"]["max_epochs"] == 2 and config["trainer"]["default_root_dir"] == "runs/quickstart"
    assert config["data"]["class_path"] == "datamodules.DigitsDataModule" and config["data"]["init_args"]
    assert config["model"]["num_classes"] == 10 and config["model"]["image_spec"]["size"] == 8
    assert {"callbacks.odin_eval.ODINEvalCallback", "callbacks.run_checkpoint.RunCheckpoint"} <= set(
        config["callbacks"])
    assert config["logger"]["project"] == "odin-pl" and not {"backbone", "config", "__default_config__"} & set(config)
    assert config["ood_evaluation"] == {"ood": {  # the callback's configuration, as the quickstart sets it
        "methods": {"msp": {}, "odin": {"temperature": 1000.0, "epsilon": 0.0014}}, "sets": list(SETS),
        "num_images": dict.fromkeys(SETS, 200), "every_n_epochs": 2, "batch_size": 256}}
    assert {"test/acc", "val/acc", "train/loss_epoch", "ood/gaussian/odin/auroc"} <= set(trained.summary)
    [model] = trained.artifacts
    sha256 = file_sha256(ckpt)
    assert (model.type, model.name) == ("model", f"model-{run_id}")
    assert set(model.aliases) == {"latest", f"sha256-{sha256[:12]}"}
    assert [entry.path for entry in model.manifest.contents] == ["last.ckpt"]
    assert training_record(ckpt)["logger"]["id"] == run_id  # what a resumed fit continues

    # Evaluation: named after the training run, the mode, methods, sets, tag and a fingerprint of the rest, in its
    # group, linked to it and to the checkpoint.
    assert re.fullmatch("quickstart-seed0-paper-msp[+]odin-gaussian[+]uniform[+]photos-[0-9a-f]{6}",
                        evaluated.run.display_name), evaluated.run.display_name
    assert re.fullmatch("quickstart-seed0-paper-msp[+]odin[+]energy-gaussian-try2-[0-9a-f]{6}",
                        second.run.display_name), second.run.display_name
    assert (evaluated.run.run_group, evaluated.run.job_type) == ("quickstart", "evaluate")
    config = evaluated.config
    assert config["training_run"]["id"] == run_id and config["training_run"]["experiment"] == "quickstart"
    assert config["tuning"]["grids"]["odin"]["temperature"] == [1.0, 1000.0] and config["tuning"]["mode"] == "paper"
    assert config["tuning"]["tune_on"] is None and config["ood"] == {"sets": list(SETS), "num_images": 200,
                                                                     "download": False}
    assert config["checkpoint"]["sha256"] == sha256 and config["checkpoint"]["backbone"] == "hendrycks_mlp"
    assert config["splits"]["gaussian"] == {"n_tune": 100, "n_test": 100}
    assert set(config["selections"]) == set(SETS)
    assert set(config["selections"]["photos"]["odin"]) == {"temperature", "epsilon"}
    reference = config["checkpoint"]["artifact"]
    logged_model = next(a for a in evaluated.artifacts if a.type == "model")
    results = next(a for a in evaluated.artifacts if a.type == "evaluation")
    assert reference == {"name": model.name, "version": f"sha256-{sha256[:12]}", "digest": model.digest,
                         "type": "model"}
    assert (logged_model.name, logged_model.digest) == (model.name, model.digest)  # offline: logged, same content
    assert results.name == f"evaluation-{evaluated.run.run_id}"
    assert {"results.json", "table.md", "results.csv", "config.yaml", "detectors/photos.odin.json"} <= {
        entry.path for entry in results.manifest.contents}
    intervals = {"msp": ("ci_low", "ci_high"), "odin": ("ci_low", "ci_high", "diff_ci_low", "diff_ci_high")}
    metrics = {f"eval/ood/{s}/{m}/{k}" for s in SETS for m in ("msp", "odin") for k in METRIC_NAMES}
    metrics |= {f"eval/ood/{s}/{m}/{k}_{f}" for s in SETS for m in intervals for k in METRIC_NAMES
                for f in intervals[m]}
    assert {k for k in evaluated.summary if k.startswith(("eval/", "ood/")) and k in metrics} == metrics
    # The metrics are the summary (no one-step charts) and one table per set and method (a row per metric).
    tables = {f"eval/ood/{s}/{m}" for s in SETS for m in ("msp", "odin")}
    written = [k for step in evaluated.history for k in step if k.startswith("eval/")]
    assert sorted(written) == sorted(tables)
    assert all(evaluated.summary[k]["_type"] == "table-file" and evaluated.summary[k]["nrows"] == len(METRIC_NAMES)
               for k in tables)

    # bootstrap continues the evaluation's run (offline: a second part with its id); aggregate logs a run.
    evaluate.main(["bootstrap", str(other), "--bootstrap.resamples", "20"])
    first_part, bootstrapped = offline_runs(other / "wandb")
    assert bootstrapped.run.run_id == second.run.run_id and "eval/ood/gaussian/energy/auroc_ci_low" in \
        bootstrapped.summary
    again = offline_wandb / "again"
    evaluate.main([*evaluation, "--output.dir", str(again), "--seed", "1", "--methods", "msp,odin,energy",
                   "--ood.sets", "gaussian", "--logger.tag", "try2", "--bootstrap.resamples", "0"])
    evaluate.main(["aggregate", str(other), str(again), "--output", str(offline_wandb / "agg")])
    [aggregated] = offline_runs(offline_wandb / "agg" / "wandb")
    assert (aggregated.run.display_name, aggregated.run.job_type) == ("aggregate-" + offline_wandb.name + "-2runs",
                                                                      "aggregate")
    assert aggregated.config["runs"] == [str(other.resolve()), str(again.resolve())]
    assert "aggregate/gaussian/energy/auroc_mean" in aggregated.summary and "aggregate" in aggregated.summary

    # A resumed fit continues its W&B run (offline: a second part with the same id; `wandb sync` uploads both).
    train.main(["--ckpt_path", "last", "--trainer.max_epochs", "3", "--trainer.callbacks", "[]", "--skip_test",
                "true"])
    first, resumed = offline_runs(offline_wandb / "runs" / "quickstart" / "wandb")
    assert resumed.run.run_id == run_id and resumed.run.display_name == "quickstart-seed0"
    assert training_record(ckpt)["logger"]["id"] == run_id
