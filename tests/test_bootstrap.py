"""odin_pl.protocol.bootstrap and odin_pl.evaluation.aggregate: intervals against a loop over scikit-learn metrics
driven by the same
resample indices (float64, 1e-9), the evaluate.py options and subcommands, and mean ± std over evaluations."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from metric_references import reference_metrics
from torch import nn
from torch.utils.data import TensorDataset

import evaluate
from odin_pl.protocol.bootstrap import bootstrap_seed, percentile_interval, resample_indices, resampled_metrics, \
    with_intervals
from odin_pl.metrics import METRIC_NAMES
from odin_pl.protocol import MethodGrid, ModelScorer, ProtocolPlan, run_protocol

ATOL = 1e-9


def _tied_scores(n_in: int = 57, n_out: int = 43) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(5)
    return (torch.tensor(np.round(rng.normal(0.6, 1.0, n_in), 1)), torch.tensor(np.round(rng.normal(0, 1, n_out), 1)))


def _loop(s_in: torch.Tensor, s_out: torch.Tensor, in_idx: torch.Tensor, out_idx: torch.Tensor) -> dict:
    """scikit-learn's metrics on each resample, one after another."""
    rows = [reference_metrics(s_in[i].numpy(), s_out[o].numpy()) for i, o in zip(in_idx, out_idx)]
    return {name: np.array([row[name] for row in rows]) for name in METRIC_NAMES}


def test_resampled_metrics_equal_a_loop_over_sklearn_on_the_same_indices(monkeypatch) -> None:
    s_in, s_out = _tied_scores()
    in_idx, out_idx = resample_indices(len(s_in), len(s_out), 40, seed=3)
    assert in_idx.shape == (40, 57) and out_idx.shape == (40, 43) and int(in_idx.max()) < 57
    monkeypatch.setattr("odin_pl.protocol.bootstrap.CHUNK_ELEMENTS", 7 * 100)  # several chunks of 7 resamples
    ours = resampled_metrics(s_in, s_out, in_idx, out_idx)
    expected = _loop(s_in, s_out, in_idx, out_idx)
    for name in METRIC_NAMES:
        np.testing.assert_allclose(ours[name].numpy(), expected[name], rtol=0, atol=ATOL, err_msg=name)


def test_percentile_interval_is_numpys_linear_percentile() -> None:
    values = torch.tensor(np.random.default_rng(0).normal(size=1001))
    assert percentile_interval(values) == pytest.approx(tuple(np.percentile(values.numpy(), [2.5, 97.5])),
                                                        abs=1e-12)
    assert percentile_interval(values, 0.8) == pytest.approx(tuple(np.percentile(values.numpy(), [10, 90])),
                                                             abs=1e-12)


def test_record_intervals_are_paired_percentiles_of_the_protocol_scores() -> None:
    """Every record's interval and its difference to MSP, recomputed with scikit-learn on the indices the set's
    recorded seed gives."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5)).double().eval()
    g = torch.Generator().manual_seed(1)
    in_set = TensorDataset(torch.randn(60, 3, 2, 2, generator=g, dtype=torch.float64), torch.zeros(60))
    ood = {"far": TensorDataset(3 * torch.randn(50, 3, 2, 2, generator=g, dtype=torch.float64), -torch.ones(50))}
    methods = [MethodGrid.of("msp"), MethodGrid.of("odin", {"temperature": (1, 100), "epsilon": (0, 0.01)}),
               MethodGrid.of("energy", {"temperature": (1, 10)})]
    result = run_protocol(ProtocolPlan(methods, n_tune=20, seed=4), in_set, ood,
                          ModelScorer(model, input_std=(0.5, 0.5, 0.5), batch_size=16))
    records = with_intervals(result, 30)
    assert [r.key for r in records] == [r.key for r in result.records]
    s_in_all, s_out_all = result.in_test_scores, result.ood_test_scores["far"]
    in_idx, out_idx = resample_indices(len(s_in_all["msp", ()]), len(s_out_all["msp", ()]), 30,
                                       bootstrap_seed(4, "far"))
    baseline = _loop(s_in_all["msp", ()], s_out_all["msp", ()], in_idx, out_idx)
    for record in records:
        fields, key = record.intervals, record.key
        values = _loop(s_in_all[key], s_out_all[key], in_idx, out_idx)
        for name in METRIC_NAMES:
            low, high = np.percentile(values[name], [2.5, 97.5])
            assert fields[f"{name}_ci_low"] == pytest.approx(low, abs=ATOL)
            assert fields[f"{name}_ci_high"] == pytest.approx(high, abs=ATOL)
            if record.method == "msp":
                assert f"{name}_diff_ci_low" not in fields
            else:
                low, high = np.percentile(values[name] - baseline[name], [2.5, 97.5])
                assert (fields[f"{name}_diff_ci_low"], fields[f"{name}_diff_ci_high"]) == pytest.approx((low, high),
                                                                                                     abs=ATOL)


SMALL = ["--ood.sets", "gaussian,photos", "--ood.num_images", "100", "--tuning.temperatures", "1,1000",
         "--tuning.epsilons", "0,0.002", "--output.logger", "false"]


def _records(folder: Path) -> list[dict]:
    return json.loads((folder / "results.json").read_text())["records"]


def test_intervals_in_results_and_for_a_finished_run(quickstart_ckpt: str, tmp_path) -> None:
    common = ["protocol", "--ckpt", quickstart_ckpt, *SMALL]
    evaluate.main([*common, "--output.dir", str(tmp_path / "with"), "--bootstrap.resamples", "50"])
    evaluate.main([*common, "--output.dir", str(tmp_path / "without"), "--bootstrap.resamples", "0"])
    with_ci, without = _records(tmp_path / "with"), _records(tmp_path / "without")
    assert [{k: v for k, v in r.items() if "_ci_" not in k} for r in with_ci] == without  # points unchanged
    assert all(f"{m}_ci_low" in r for r in with_ci for m in METRIC_NAMES)
    assert all(("auroc_diff_ci_low" in r) == (r["method"] == "odin") for r in with_ci)
    with open(tmp_path / "with" / "results.csv", newline="") as handle:
        assert "fpr_at_95_tpr_diff_ci_high" in next(csv.DictReader(handle))
    assert (tmp_path / "with" / "table.md").read_text() == (tmp_path / "without" / "table.md").read_text()
    meta = json.loads((tmp_path / "with" / "results.json").read_text())
    assert meta["bootstrap"]["resamples"] == 50 and meta["bootstrap"]["set_seeds"]["photos"] == bootstrap_seed(0,
                                                                                                               "photos")
    assert {"torch", "cpu", "threads"} <= set(meta["environment"])
    # The same intervals for the finished run, from its saved scores; and printed on request.
    evaluate.main(["bootstrap", str(tmp_path / "without"), "--bootstrap.resamples", "50", "--bootstrap.show", "true"])
    assert _records(tmp_path / "without") == with_ci
    assert "[" in (tmp_path / "without" / "table.md").read_text()
    with pytest.raises(ValueError, match="must be 0 \\(no intervals\\) or at least 2"):
        evaluate.main([*common, "--output.dir", str(tmp_path / "bad"), "--bootstrap.resamples", "1"])
    with pytest.raises(ValueError, match="--bootstrap.show needs intervals"):
        evaluate.main([*common, "--output.dir", str(tmp_path / "bad"), "--bootstrap.resamples", "0",
                       "--bootstrap.show", "true"])


def _perturbed_checkpoint(ckpt: str, seed: int, folder: Path) -> str:
    """Another checkpoint of the same setting: the quickstart weights plus seeded noise (as another training
    seed would give)."""
    checkpoint = torch.load(ckpt, weights_only=False)
    g = torch.Generator().manual_seed(seed)
    checkpoint["state_dict"] = {k: v + 0.05 * torch.randn(v.shape, generator=g, dtype=v.dtype)
                                if v.is_floating_point() else v for k, v in checkpoint["state_dict"].items()}
    path = folder / f"seed{seed}.ckpt"
    torch.save(checkpoint, path)
    return str(path)


def test_aggregate_is_the_mean_and_sample_std_of_the_rows(quickstart_ckpt: str, tmp_path) -> None:
    runs = []
    for i, ckpt in enumerate([quickstart_ckpt, *(_perturbed_checkpoint(quickstart_ckpt, s, tmp_path) for s in (1, 2))]):
        runs.append(str(tmp_path / f"run{i}"))
        evaluate.main(["protocol", "--ckpt", ckpt, *SMALL, "--bootstrap.resamples", "0", "--output.dir", runs[-1]])
    aggregate = evaluate.main(["aggregate", *runs, "--output", str(tmp_path / "agg")])
    separate = [_records(Path(run)) for run in runs]
    assert len(aggregate["rows"]) == len(separate[0]) == 4 and aggregate["n_runs"] == 3
    for position, row in enumerate(aggregate["rows"]):
        for name in METRIC_NAMES:
            values = np.array([records[position][name] for records in separate])
            assert row[f"{name}_mean"] == pytest.approx(values.mean(), abs=1e-12)
            assert row[f"{name}_std"] == pytest.approx(values.std(ddof=1), abs=1e-12)
    assert json.loads((tmp_path / "agg" / "aggregate.json").read_text()) == aggregate
    assert " ± " in (tmp_path / "agg" / "aggregate.md").read_text()
    assert any(row["auroc_std"] > 0 for row in aggregate["rows"])  # the checkpoints differ
    with pytest.raises(ValueError, match="at least two evaluation folders"):
        evaluate.main(["aggregate", runs[0], "--output", str(tmp_path / "agg1")])
    other_seed = str(tmp_path / "other_seed")
    evaluate.main(["protocol", "--ckpt", quickstart_ckpt, *SMALL, "--bootstrap.resamples", "0", "--seed", "1",
                   "--output.dir", other_seed])
    with pytest.raises(ValueError, match="differs from .* in 'seed'"):
        evaluate.main(["aggregate", runs[0], other_seed, "--output", str(tmp_path / "agg2")])
