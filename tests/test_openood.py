"""OpenOOD v1.5: image lists, preprocessing, the four benchmarks as suites, downloads, and the metrics.

References: scikit-learn called as OpenOOD's ``evaluators/metrics.py`` calls it (float64, tolerance 1e-12);
PIL and numpy for the preprocessing (tolerance 1e-6 on float32 tensors); pytorch-ood 0.4.0's OpenOOD benchmark
classes for which images a list names.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from odin_pl.errors import UserError
from odin_pl.openood_metrics import (OPENOOD_METRIC_NAMES, group_mean, id_accuracy, openood_metric_rows,
                                     openood_metrics, seed_mean_std)

TOL = 1e-12


# ----------------------------------------------------------------------------------------------------- metrics
def openood_reference(id_conf: np.ndarray, ood_conf: np.ndarray) -> dict[str, float]:
    """OpenOOD's ``auc_and_fpr_recall`` with scikit-learn: OOD positive, score -conf, scikit-learn's defaults."""
    conf = np.concatenate([id_conf, ood_conf]).astype(np.float64)
    ood = np.concatenate([np.zeros(len(id_conf), int), np.ones(len(ood_conf), int)])
    fpr, tpr, _ = skm.roc_curve(ood, -conf)
    precision_in, recall_in, _ = skm.precision_recall_curve(1 - ood, conf)
    precision_out, recall_out, _ = skm.precision_recall_curve(ood, -conf)
    return {"fpr_at_95_tpr": float(fpr[np.argmax(tpr >= 0.95)]), "auroc": skm.auc(fpr, tpr),
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
    assert openood_reference(conf, conf)["fpr_at_95_tpr"] == 1.0
    assert openood_metrics(conf, conf)["fpr_at_95_tpr"] == 1.0
    assert abs(openood_metrics(conf, conf)["auroc"] - 0.5) <= TOL


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
