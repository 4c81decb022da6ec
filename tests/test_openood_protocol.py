"""OpenOOD v1.5's protocol (odin_pl.protocol.openood): the search space and its order, the search's choice and tie
rule, the per-set and near/far metrics and their bootstrap intervals, and the full path on the quickstart model
with a generated suite in OpenOOD's folder layout.

References: an independent loop over the settings with scikit-learn's roc_auc_score (OOD positive, score -conf);
OpenOOD's metric formulas with scikit-learn (``test_openood.openood_reference``), numpy's linear percentiles;
tolerance 1e-12 on metrics, 1e-9 on intervals (float64).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score
from torch.utils.data import Dataset, TensorDataset
from torchvision import transforms as T

import datamodules.openood_benchmarks as openood_benchmarks
from datamodules.openood import read_image_list
from odin_pl.evaluation.options import ProtocolConfig
from odin_pl.errors import UserError
from odin_pl.methods import Method, Param, create_method, list_methods
from odin_pl.metrics import ood_metrics
from odin_pl.protocol.bootstrap import bootstrap_seed, resample_indices
from odin_pl.protocol.openood import (OpenOODSets, openood_intervals, openood_plan, openood_settings, run_openood,
                                      select_openood)
from test_openood import openood_reference

TOL = 1e-12
INTERVAL_TOL = 1e-9


def reference_choice(val_in: np.ndarray, val_out: np.ndarray) -> int:
    """OpenOOD's APS: loop over the settings in order, keep a setting only when its AUROC is strictly larger."""
    labels = np.r_[np.zeros(val_in.shape[1]), np.ones(val_out.shape[1])]
    best, best_auroc = None, -np.inf
    for i in range(len(val_in)):
        auroc = roc_auc_score(labels, -np.r_[val_in[i], val_out[i]])
        if auroc > best_auroc:
            best, best_auroc = i, auroc
    return best


def test_search_space_in_openoods_order_first_key_fastest():
    expected = [(t, e) for e in (0.0014, 0.0028) for t in (1.0, 10.0, 100.0, 1000.0)]
    assert list(openood_settings(create_method("odin"))) == expected
    assert openood_settings(create_method("knn")) == tuple((k,) for k in (50.0, 100.0, 200.0, 500.0, 1000.0))
    assert openood_settings(create_method("mahalanobis")) == ((0.0,),)  # OpenOOD's mds: no search
    assert openood_settings(create_method("msp")) == ((),)
    assert create_method("react").openood_fit_split == "val" and create_method("knn").openood_fit_split == "train"

    class Undeclared(Method):
        name = "undeclared"
        params = (Param("a", "a", (1.0, 2.0)),)

        def score(self, batch, settings):
            raise AssertionError

    with pytest.raises(UserError, match="declares no OpenOOD search space"):
        openood_settings(Undeclared())


# DESIGN, "OpenOOD v1.5 protocol": the sweeps OpenOOD lists; the methods it runs without a search keep their fixed
# default (dice p 90, gradnorm T 1, nnguide K 100), those it has no sweep for their own tie default.
OPENOOD_SWEEPS = {
    "vim": [(256.0,), (1000.0,)], "residual": [(256.0,), (1000.0,)],
    "gen": [(g, m) for m in (10.0, 50.0, 100.0, 200.0, 500.0, 1000.0) for g in (0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0)],
    **{name: [(p,) for p in (65.0, 70.0, 75.0, 80.0, 85.0, 90.0, 95.0)]
       for name in ("ash_p", "ash_b", "ash_s", "scale")},
    "dice": [(90.0,)], "gradnorm": [(1.0,)], "nnguide": [(100.0,)], "fdbd": [(0.0,)], "gram": [(10.0,)],
    "openmax": [(20.0, 10.0, 0.0)],
    **{name: [()] for name in ("rmds", "she", "klm", "mcd", "mcd_var", "tempscale")},
}
OPENOOD_VAL_FITS = {"react", "klm", "tempscale"}  # OpenOOD's fits on the ID val list; the rest fit on ID train


def test_every_method_runs_under_openoods_protocol_with_its_sweep():
    for name in list_methods():
        method = create_method(name)
        settings = list(openood_settings(method))  # raises for a method with parameters and no declared sweep
        if name in OPENOOD_SWEEPS:
            assert settings == OPENOOD_SWEEPS[name], name
        assert method.openood_fit_split == ("val" if name in OPENOOD_VAL_FITS else "train"), name
        assert all(method.check_setting(s) == s for s in settings), name


def test_search_takes_the_first_maximum_of_auroc():
    rng = np.random.default_rng(0)
    method = create_method("odin")
    settings = openood_settings(method)
    base_in, base_out = rng.normal(1.0, 1.0, 60), rng.normal(0.0, 1.0, 50)
    val_in = np.stack([base_in + rng.normal(0, 1.5, 60) for _ in settings])
    val_out = np.stack([base_out + rng.normal(0, 1.5, 50) for _ in settings])
    val_in[2], val_out[2] = base_in, base_out  # the best, tied by a monotone copy later in the order
    val_in[5], val_out[5] = np.exp(base_in), np.exp(base_out)
    labels = np.r_[np.zeros(60), np.ones(50)]
    aurocs = [roc_auc_score(labels, -np.r_[a, b]) for a, b in zip(val_in, val_out)]
    assert aurocs[2] == aurocs[5] == max(aurocs)  # the tie the rule must break
    selection = select_openood(method, settings, torch.tensor(val_in), torch.tensor(val_out))
    assert selection.setting == settings[reference_choice(val_in, val_out)] == settings[2]
    assert selection.tuning_auroc == pytest.approx(aurocs[2], abs=TOL)
    assert np.asarray(selection.fpr_grid).shape == (4, 2)  # [T][epsilon], for the grid figure
    # the tuning FPR is this package's (ID positive) at the chosen setting, as in the paper's protocol's files
    assert selection.tuning_fpr == ood_metrics(torch.tensor(val_in[2]), torch.tensor(val_out[2]))["fpr_at_95_tpr"]
    assert selection.fpr_grid[2][0] == selection.tuning_fpr  # T = 100, epsilon = 0.0014


class FakeScorer:
    """Scores each TensorDataset (one value per image) per setting as value * (1 + row) + row-specific noise
    (row 0 noise-free), the same for every method: no model needed."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def __call__(self, dataset, plan, *, desc, done=None, on_range=None):
        values = dataset.tensors[0].double()
        out = {}
        for method, settings in plan.items():
            g = torch.Generator().manual_seed(self.seed + len(values))
            rows = [values * (1 + i) + (i > 0) * torch.randn(len(values), generator=g, dtype=torch.float64)
                    for i in range(len(settings))]
            out[method] = torch.stack(rows)
        return out


def _tensor_set(rng: np.random.Generator, n: int, loc: float, tied: bool = False) -> TensorDataset:
    values = rng.integers(0, 6, n).astype(float) + loc if tied else rng.normal(loc, 1.0, n)
    return TensorDataset(torch.tensor(values))


def test_per_set_metrics_group_means_and_their_intervals():
    rng = np.random.default_rng(1)
    sets = OpenOODSets("toy", id_val=_tensor_set(rng, 40, 2.0), id_test=_tensor_set(rng, 70, 2.0, tied=True),
                       ood_val_name="val_ood", ood_val=_tensor_set(rng, 30, 0.0),
                       near={"a": _tensor_set(rng, 45, 1.0, tied=True), "b": _tensor_set(rng, 35, 1.5)},
                       far={"c": _tensor_set(rng, 50, -1.0)},
                       listed={"near": ("a", "b"), "far": ("c", "d"), "val": ("val_tin",)})
    plan = openood_plan(["msp", "odin"], seed=3)
    result = run_openood(plan, sets, FakeScorer(), accuracy=0.5)
    assert result.groups == {"near": ["a", "b"], "far": ["c"]}
    assert any("far-OOD mean is over c only (d missing)" in note for note in result.notes)
    assert any("used val_ood (a folder) in place of OpenOOD's val_tin" in note for note in result.notes)
    per_set = {}
    for record in result.records:
        s_in = result.in_test_scores[record.key].numpy()
        s_out = result.ood_test_scores[record.ood][record.key].numpy()
        reference = openood_reference(s_in, s_out)
        per_set[record.ood, record.method] = reference
        for metric, value in reference.items():
            assert record.metrics[f"openood_{metric}"] == pytest.approx(value, abs=TOL)
        assert record.protocol == "openood" and record.metrics["openood_acc"] == 0.5
        assert (record.n_in, record.n_out) == (70, len(sets.test_sets[record.ood]))
    for group in result.group_records:
        for metric in ("fpr95", "auroc", "aupr_in", "aupr_out"):
            expected = np.mean([per_set[name, group.method][metric] for name in group.members])
            assert group.metrics[f"openood_{metric}"] == pytest.approx(expected, abs=TOL)

    resamples = 25
    with_ci = openood_intervals(result, resamples)
    draws = {}
    for name in sets.test_sets:
        in_idx, out_idx = resample_indices(70, len(sets.test_sets[name]), resamples, bootstrap_seed(3, name))
        draws[name] = in_idx.numpy(), out_idx.numpy()
    for group in with_ci.group_records:
        key = next(r.key for r in result.records if r.method == group.method)
        per_resample = []
        for b in range(resamples):
            values = []
            for name in group.members:
                s_in = result.in_test_scores[key].numpy()[draws[name][0][b]]
                s_out = result.ood_test_scores[name][key].numpy()[draws[name][1][b]]
                values.append(openood_reference(s_in, s_out)["auroc"])
            per_resample.append(np.mean(values))
        low, high = np.percentile(per_resample, [2.5, 97.5])
        assert group.intervals["openood_auroc_ci_low"] == pytest.approx(low, abs=INTERVAL_TOL)
        assert group.intervals["openood_auroc_ci_high"] == pytest.approx(high, abs=INTERVAL_TOL)
    record = next(r for r in with_ci.records if r.ood == "a" and r.method == "odin")
    fprs = [openood_reference(result.in_test_scores[record.key].numpy()[draws["a"][0][b]],
                              result.ood_test_scores["a"][record.key].numpy()[draws["a"][1][b]])["fpr95"]
            for b in range(resamples)]
    assert record.intervals["openood_fpr95_ci_low"] == pytest.approx(np.percentile(fprs, 2.5), abs=INTERVAL_TOL)


# ------------------------------------------------------------------------------------------- the full path
class ListedGrayImages(Dataset):
    """An OpenOOD list read for the 8x8 grayscale quickstart model: its images as 'L', ToTensor, the spec's
    normalization (OpenOOD's own benchmarks are RGB; this is the test's tiny benchmark)."""

    def __init__(self, root: Path, list_file: str, spec) -> None:
        self.root, self.entries = root / "images_classic", read_image_list(root / "benchmark_imglist" / list_file)
        self.transform = T.Compose([T.ToTensor(), T.Normalize(spec.mean, spec.std)])
        self.samples = [(self.root / relpath, label) for relpath, label in self.entries]  # for the fingerprint

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int):
        relpath, label = self.entries[index]
        return self.transform(Image.open(self.root / relpath).convert("L")), label


def _write_suite(root: Path, seed: int = 0) -> dict[str, str]:
    """A digits benchmark in OpenOOD's layout: ID train/val/test lists of digits, OOD lists of noise, inverted
    digits and blobs; returns set -> list file."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    digits = load_digits()
    images = (digits.images / 16 * 255).astype(np.uint8)
    order = rng.permutation(len(images))
    splits = {"train_digits": order[:900], "val_digits": order[900:1000], "test_digits": order[1000:1300]}
    lists = {}

    def write(list_name: str, folder: str, arrays, labels) -> None:
        lines = []
        for i, (array, label) in enumerate(zip(arrays, labels)):
            path = root / "images_classic" / folder / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array, mode="L").save(path)
            lines.append(f"{folder}/{i}.png {label}")
        list_path = root / "benchmark_imglist" / "digits" / f"{list_name}.txt"
        list_path.parent.mkdir(parents=True, exist_ok=True)
        list_path.write_text("\n".join(lines) + "\n")
        lists[list_name] = f"digits/{list_name}.txt"

    for name, index in splits.items():
        write(name, f"digits/{name}", images[index], digits.target[index])
    ood = {"val_noise": rng.integers(0, 256, (60, 8, 8)),
           "test_inverted": 255 - images[order[1300:1420]],
           "test_noise": rng.integers(0, 256, (80, 8, 8)),
           "test_blobs": (rng.random((70, 8, 8)) > 0.6) * 255}
    for name, arrays in ood.items():
        write(name, name.removeprefix("test_"), np.asarray(arrays, dtype=np.uint8), [-1] * len(arrays))
    return lists


def _digit_sets(root: Path, spec) -> OpenOODSets:
    """The generated digits benchmark (:func:`_write_suite`) as the protocol's sets."""
    lists = _write_suite(root)

    def listed(name: str) -> ListedGrayImages:
        return ListedGrayImages(root, lists[name], spec)

    return OpenOODSets("digits", listed("val_digits"), listed("test_digits"), "val_noise", listed("val_noise"),
                       near={"inverted": listed("test_inverted")},
                       far={"noise": listed("test_noise"), "blobs": listed("test_blobs")},
                       id_train=listed("train_digits"), listed={"near": ("inverted",), "far": ("noise", "blobs")})


def test_both_protocols_in_one_command(quickstart_ckpt, tmp_path, monkeypatch):
    """evaluate.py with --tuning.mode paper,openood: the paper's protocol in the output folder, OpenOOD's in
    openood/ (its suite: the generated digits benchmark in place of a named one), both logged."""
    import evaluate

    calls = []

    class Suite:
        def __init__(self, benchmark, data_root, spec, download, **kwargs):
            calls.append((benchmark, kwargs["train"]))
            self.spec = spec

        def sets(self) -> OpenOODSets:
            return _digit_sets(tmp_path / "data", self.spec)

    monkeypatch.setattr(openood_benchmarks, "build_openood_suite", Suite)  # evaluate.py imports it when it runs
    out = tmp_path / "out"
    run = evaluate.main(["protocol", "--ckpt", quickstart_ckpt, "--tuning.mode", "paper,openood", "--openood.benchmark",
                         "digits", "--methods", "msp,odin,knn", "--ood.sets", "gaussian", "--ood.num_images", "100",
                         "--tuning.temperatures", "1,1000", "--tuning.epsilons", "0,0.002", "--bootstrap.resamples",
                         "20", "--logger.backend", "csv", "--output.dir", str(out)])
    assert calls == [("digits", True)] and run.mode == "paper"
    assert json.loads((out / "results.json").read_text())["protocol"] == "odin"
    assert json.loads((out / "openood" / "results.json").read_text())["protocol"] == "openood"
    assert "(paper mode)" in (out / "table.md").read_text()
    assert "| **farood** |" in (out / "openood" / "table.md").read_text()
    logged = "".join(p.read_text() for p in (out / "openood").rglob("metrics.csv"))
    assert "eval/openood/far/knn/auroc" in logged and "eval/openood/noise/odin/aupr_out" in logged


def test_full_path_on_the_quickstart_model(quickstart_ckpt, tmp_path):
    from odin_pl.evaluation.logs import run_metrics
    from odin_pl.evaluation.options import (BootstrapOptions, OpenOODOptions, OutputOptions, ProtocolConfig,
                                            TuningOptions)
    from odin_pl.evaluation.outputs import write_run
    from odin_pl.evaluation.run import evaluate_openood, load_target

    methods = "msp,odin,energy,react,knn"
    config = ProtocolConfig(ckpt=quickstart_ckpt, tuning=TuningOptions(mode="paper,openood", methods=methods),
                            openood=OpenOODOptions(benchmark="digits"), bootstrap=BootstrapOptions(resamples=20),
                            output=OutputOptions(dir=str(tmp_path / "out"), resume=True, logger=False))
    target = load_target(config)
    sets = _digit_sets(tmp_path / "data", target.spec)
    out = tmp_path / "out" / "openood"
    run = evaluate_openood(config, target, sets, out)
    result = run.result
    assert {s.setting for s in result.selections["odin"].values()} <= set(openood_settings(create_method("odin")))
    assert set(result.selections) == {"odin", "react", "knn"}  # the methods with an OpenOOD search
    # the search on the saved validation scores, redone independently
    val_in, val_out = (result.tuning_scores["odin"][n].numpy() for n in ("id_val", "val_noise"))
    settings = [g for g in result.methods if g.name == "odin"][0].settings
    assert result.selections["odin"]["val_noise"].setting == settings[reference_choice(val_in, val_out)]
    # ACC: argmax of the logits on the ID test list
    logits = torch.cat([target.model(x[None]) for x, _ in sets.id_test]).argmax(dim=1)
    labels = torch.tensor([label for _, label in sets.id_test.entries])
    assert result.accuracy == pytest.approx(float((logits == labels).double().mean()), abs=TOL)
    for record in result.records:
        reference = openood_reference(result.in_test_scores[record.key].numpy(),
                                      result.ood_test_scores[record.ood][record.key].numpy())
        assert record.metrics["openood_auroc"] == pytest.approx(reference["auroc"], abs=TOL)
        assert "openood_auroc_ci_low" in record.intervals and "auroc_ci_low" in record.intervals

    files = write_run(run, target.model, out)
    print(run.table)
    table = (out / "table.md").read_text()
    assert "OpenOOD v1.5 protocol, digits" in table and "| **nearood** |" in table and "| **farood** |" in table
    layout = table[table.index("**msp** (OpenOOD v1.5, digits)"):]
    assert layout.index("| inverted |") < layout.index("| **nearood** |") < layout.index("| noise |") \
        < layout.index("| blobs |") < layout.index("| **farood** |")
    saved = json.loads((out / "results.json").read_text())
    assert saved["protocol"] == "openood" and {r["protocol"] for r in saved["records"]} == {"openood"}
    assert (out / "detectors" / "val_noise.odin.json").is_file() and files.detectors
    metrics = run_metrics(run, {})
    far = next(g for g in result.group_records if g.group == "far" and g.method == "knn")
    assert metrics["eval/openood/far/knn/auroc"] == far.metrics["openood_auroc"]
    noise = next(r for r in result.records if r.ood == "noise" and r.method == "msp")
    assert metrics["eval/openood/noise/msp/fpr95_ci_high"] == noise.intervals["openood_fpr95_ci_high"]
    assert metrics["eval/ood/noise/msp/auroc"] == noise.metrics["auroc"]  # this package's metrics, as before

    again = evaluate_openood(config, target, sets, out)  # resume: every pass and fit from its file
    assert len(again.reused_score_files) >= 2 + len(sets.test_sets) and set(again.fits.reused) == {"react", "knn"}
    assert [r.metrics for r in again.result.records] == [r.metrics for r in result.records]


def test_options_refuse_what_does_not_go_with_openood(quickstart_ckpt):
    from odin_pl.evaluation.options import OpenOODOptions, ProtocolConfig, TuningOptions

    with pytest.raises(UserError, match="--openood.benchmark NAME goes with --tuning.mode openood"):
        ProtocolConfig(ckpt=quickstart_ckpt, openood=OpenOODOptions(benchmark="cifar10"))
    with pytest.raises(UserError, match="goes with --tuning.mode openood"):
        ProtocolConfig(ckpt=quickstart_ckpt, tuning=TuningOptions(mode="openood"))
    with pytest.raises(UserError, match="OpenOOD sweep"):
        TuningOptions(mode="openood", grids={"odin": {"temperature": [1]}})
    with pytest.raises(UserError, match="one of the paper's modes and openood"):
        TuningOptions(mode="paper,cross")
    assert TuningOptions(mode="cross,openood").odin_mode == "cross" and TuningOptions(mode="openood").odin_mode is None


@pytest.mark.parametrize("benchmark", ["cifar10", "cifar100", "imagenet200", "imagenet"])
def test_each_openood_config_names_its_benchmark_and_fails_closed_without_its_lists(benchmark, quickstart_ckpt,
                                                                                   tmp_path):
    import evaluate

    config = Path(evaluate.__file__).parent / "configs" / "evaluate" / f"openood_{benchmark}.yaml"
    command = ["protocol", "--config", str(config), "--ckpt", quickstart_ckpt, "--data_root", str(tmp_path),
               "--output.dir", str(tmp_path / "out")]
    parser = evaluate.build_parser()[1]["protocol"]
    options = evaluate._typed(ProtocolConfig, parser.instantiate(parser.parse_args(command[1:])))
    assert (options.tuning.mode, options.openood.benchmark) == ("openood", benchmark)
    with pytest.raises(UserError, match=f"benchmark_imglist/{benchmark}/val_{benchmark}.txt not found"):
        evaluate.main(command)


def test_aggregate_gives_openoods_population_std_beside_ours(tmp_path):
    from odin_pl.evaluation.aggregate import aggregate_results, aggregate_table
    from odin_pl.metrics import METRIC_NAMES

    rng = np.random.default_rng(2)
    runs = []
    for _ in range(3):
        record = {"ood": "a", "method": "msp", "tuned_on": None, **{m: float(rng.random()) for m in METRIC_NAMES},
                  **{f"openood_{m}": float(rng.random()) for m in ("fpr95", "auroc", "aupr_in", "aupr_out", "acc")}}
        group = {"group": "near", "method": "msp", "openood_auroc": float(rng.random())}
        runs.append({"protocol": "openood", "records": [record], "openood": {"group_records": [group]}})
    aggregate = aggregate_results(runs, ["s0", "s1", "s2"])
    row, near = aggregate["rows"]
    aurocs = [r["records"][0]["auroc"] for r in runs]
    theirs = [r["records"][0]["openood_auroc"] for r in runs]
    assert row["auroc_std"] == pytest.approx(np.std(aurocs, ddof=1), abs=TOL)
    assert row["openood_auroc_std_pop"] == pytest.approx(np.std(theirs, ddof=0), abs=TOL)
    assert row["openood_auroc_mean"] == pytest.approx(np.mean(theirs), abs=TOL)
    assert near["ood"] == "near" and near["openood_auroc_std_pop"] == pytest.approx(
        np.std([r["openood"]["group_records"][0]["openood_auroc"] for r in runs], ddof=0), abs=TOL)
    assert "population std" in aggregate_table(aggregate)
