"""odin_pl.metrics against independent numpy / scikit-learn references (DESIGN.md, "Metrics").

The references below use only numpy and scikit-learn in float64; the implementation under test must agree
with them to 1e-9 (DESIGN: "to 1e-9 when computed in float64").
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metric_references import fpr_tpr_at_95, reference_metrics
from odin_pl.metrics import METRIC_NAMES, OODMetrics, metric_rows, ood_metrics, rates_at_tpr

ATOL = 1e-9


# ----------------------------------------------------------------------------------------------------------
# References
# ----------------------------------------------------------------------------------------------------------

def brute_force_delta_star(s_in: np.ndarray) -> float:
    """The largest candidate delta (any in-distribution score) with mean(s_in >= delta) >= 0.95."""
    s_in = np.asarray(s_in, dtype=np.float64)
    ok = [c for c in s_in if np.mean(s_in >= c) >= 0.95]
    return float(max(ok))


def kth_largest_delta_star(s_in: np.ndarray) -> float:
    """The ceil(0.95 n)-th largest score, with the ceiling taken in exact integer arithmetic."""
    n = len(s_in)
    k = -(-19 * n // 20)
    return float(np.sort(np.asarray(s_in, dtype=np.float64))[::-1][k - 1])


def _dict_close(got: dict[str, float], want: dict[str, float], atol: float = ATOL) -> None:
    assert set(got) == set(want) == set(METRIC_NAMES)
    bad = {k: (got[k], want[k]) for k in want if not abs(got[k] - want[k]) <= atol}
    assert not bad, f"metrics differ from the reference (got, want): {bad}"


# ----------------------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------------------

def _case(name: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(sum(map(ord, name)))  # fixed seed per case
    if name == "balanced":
        return rng.normal(1.0, 1.0, 500), rng.normal(0.0, 1.0, 500)
    if name == "imbalanced_1000_37":
        return rng.normal(0.8, 1.0, 1000), rng.normal(0.0, 1.0, 37)
    if name == "imbalanced_37_1000":
        return rng.normal(0.8, 1.0, 37), rng.normal(0.0, 1.0, 1000)
    if name == "ties_round_1":
        return np.round(rng.normal(0.5, 1.0, 400), 1), np.round(rng.normal(0.0, 1.0, 300), 1)
    if name == "ties_round_2_probs":
        return np.round(rng.beta(5, 2, 333), 2), np.round(rng.beta(2, 3, 444), 2)
    if name == "ties_few_integers":
        return rng.integers(1, 5, 250).astype(float), rng.integers(0, 4, 180).astype(float)
    if name == "ties_two_values":
        return rng.integers(0, 2, 100).astype(float), rng.integers(0, 2, 100).astype(float)
    if name.startswith("n_in_"):  # 0.95 * n_in integer (20, 100, 1000, 60) or not (19, 21, 59, 61, 1, 7)
        n = int(name.split("_")[2])
        ties = name.endswith("_ties")
        s_in, s_out = rng.normal(0.7, 1.0, n), rng.normal(0.0, 1.0, 3 * n + 5)
        if ties:
            s_in, s_out = np.round(s_in, 1), np.round(s_out, 1)
        return s_in, s_out
    if name == "separated":
        return rng.uniform(1.0, 2.0, 200), rng.uniform(-1.0, 0.5, 150)
    if name == "separated_reversed":
        return rng.uniform(-1.0, 0.5, 200), rng.uniform(1.0, 2.0, 150)
    if name == "touching_at_one_value":  # the lowest in-score equals the highest OOD score
        s_in, s_out = rng.uniform(1.0, 2.0, 40), rng.uniform(0.0, 1.0, 30)
        s_in[3], s_out[7] = 1.0, 1.0
        return s_in, s_out
    if name == "overlap_identical_arrays":
        x = rng.normal(0.0, 1.0, 300)
        return x.copy(), x.copy()
    if name == "overlap_all_constant":
        return np.full(80, 0.3), np.full(50, 0.3)
    if name == "single_in_single_out":
        return np.array([0.2]), np.array([0.7])
    if name == "raw_logits_large_range":
        return rng.normal(8.0, 6.0, 300), rng.normal(-3.0, 9.0, 200)
    raise KeyError(name)


CASES = [
    "balanced", "imbalanced_1000_37", "imbalanced_37_1000", "ties_round_1", "ties_round_2_probs",
    "ties_few_integers", "ties_two_values",
    *[f"n_in_{n}" for n in (20, 100, 1000, 60, 19, 21, 59, 61, 1, 7)],
    *[f"n_in_{n}_ties" for n in (20, 100, 60, 21)],
    "separated", "separated_reversed", "touching_at_one_value", "overlap_identical_arrays",
    "overlap_all_constant", "single_in_single_out", "raw_logits_large_range",
]


# ----------------------------------------------------------------------------------------------------------
# Functional metrics
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CASES)
def test_ood_metrics_match_sklearn_reference(name):
    s_in, s_out = _case(name)
    got = ood_metrics(torch.from_numpy(s_in), torch.from_numpy(s_out))
    _dict_close(got, reference_metrics(s_in, s_out))
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in got.values())


@pytest.mark.parametrize("name", CASES)
def test_sklearn_fpr95_reference_agrees_with_design_definition(name):
    """The roc_curve-based reference is the DESIGN definition: delta* = ceil(0.95 n_in)-th largest in-score."""
    s_in, s_out = _case(name)
    delta_bf = brute_force_delta_star(s_in)
    assert delta_bf == kth_largest_delta_star(s_in)
    y_in = np.concatenate([np.ones(len(s_in), int), np.zeros(len(s_out), int)])
    fpr, tpr, thr = fpr_tpr_at_95(y_in, np.concatenate([s_in, s_out]))
    assert thr == delta_bf
    assert tpr == np.mean(s_in >= delta_bf) >= 0.95
    assert fpr == np.mean(s_out >= delta_bf)
    # and the implementation's own threshold / rates
    tpr_impl, fpr_impl, delta_impl = rates_at_tpr(torch.from_numpy(s_in), torch.from_numpy(s_out))
    assert delta_impl == delta_bf
    assert tpr_impl == pytest.approx(tpr, abs=ATOL)
    assert fpr_impl == pytest.approx(fpr, abs=ATOL)


@pytest.mark.parametrize("n_in", [1, 2, 19, 20, 21, 40, 59, 60, 61, 100, 101, 999, 1000, 1001])
def test_delta_star_is_ceil_095_n_th_largest(n_in):
    rng = np.random.default_rng(n_in)
    s_in = rng.permutation(np.arange(n_in, dtype=np.float64))  # distinct scores 0..n-1
    k = -(-19 * n_in // 20)
    assert k == math.ceil(0.95 * n_in)  # the integer ceiling agrees with float here (no rounding surprise)
    want = float(n_in - k)  # the k-th largest of 0..n-1
    _, _, delta = rates_at_tpr(torch.from_numpy(s_in), torch.tensor([0.0]))
    assert delta == want == brute_force_delta_star(s_in)
    # TPR at delta* >= 0.95, and at the next larger score it drops below 0.95 (delta* is the largest such)
    assert np.mean(s_in >= delta) >= 0.95
    if k > 1:
        assert np.mean(s_in >= delta + 1) < 0.95


def test_exact_boundary_counts_with_ties():
    # n_in = 20: delta* is the 19th largest. The 19th and 20th largest tie, so TPR(delta*) = 1 (ties accepted).
    s_in = np.array([10.0] * 18 + [5.0, 5.0])
    s_out = np.array([4.0, 5.0, 6.0, 11.0])
    m = ood_metrics(s_in, s_out)
    assert m["fpr_at_95_tpr"] == 0.75  # 5, 6, 11 are >= 5
    assert m["detection_error"] == 0.5 * (1 - 1.0) + 0.5 * 0.75
    _dict_close(m, reference_metrics(s_in, s_out))


def test_accepts_lists_numpy_and_float32_tensors():
    s_in, s_out = _case("ties_round_2_probs")
    want = reference_metrics(s_in.astype(np.float32), s_out.astype(np.float32))
    for a, b in [(s_in.astype(np.float32).tolist(), s_out.astype(np.float32).tolist()),
                 (s_in.astype(np.float32), s_out.astype(np.float32)),
                 (torch.tensor(s_in, dtype=torch.float32), torch.tensor(s_out, dtype=torch.float32))]:
        _dict_close(ood_metrics(a, b), want)


def test_known_values_separated_and_overlapping():
    m = ood_metrics(np.array([2.0, 3.0, 4.0]), np.array([0.0, 1.0]))
    assert m["auroc"] == 1.0 and m["fpr_at_95_tpr"] == 0.0 and m["detection_error"] == 0.0
    assert m["aupr_in"] == 1.0 and m["aupr_out"] == 1.0 and m["fpr_at_95_tpr_ood_positive"] == 0.0
    m = ood_metrics(np.full(10, 0.5), np.full(10, 0.5))
    assert m["auroc"] == 0.5 and m["fpr_at_95_tpr"] == 1.0 and m["detection_error"] == 0.5
    assert m["aupr_in"] == 0.5 and m["aupr_out"] == 0.5


@pytest.mark.parametrize("bad_in, bad_out", [([], [0.1, 0.2]), ([0.1, 0.2], []), ([], [])])
def test_empty_scores_raise(bad_in, bad_out):
    with pytest.raises(ValueError, match="empty"):
        ood_metrics(torch.tensor(bad_in, dtype=torch.float64), torch.tensor(bad_out, dtype=torch.float64))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", ["in", "out"])
def test_non_finite_scores_raise(bad, where):
    good = [0.1, 0.5, 0.9]
    bad_list = [0.2, bad, 0.3]
    args = (bad_list, good) if where == "in" else (good, bad_list)
    with pytest.raises(ValueError, match="NaN"):
        ood_metrics(*args)


# ----------------------------------------------------------------------------------------------------------
# OODMetrics (torchmetrics)
# ----------------------------------------------------------------------------------------------------------

def _mixed_batches(s_in: np.ndarray, s_out: np.ndarray, batch: int, seed: int = 0):
    """Shuffle in/out scores together and cut into batches: (scores, is_in, global index) per batch."""
    scores = np.concatenate([s_in, s_out])
    is_in = np.concatenate([np.ones(len(s_in), bool), np.zeros(len(s_out), bool)])
    idx = np.arange(len(scores))
    perm = np.random.default_rng(seed).permutation(len(scores))
    for start in range(0, len(scores), batch):
        p = perm[start:start + batch]
        yield torch.from_numpy(scores[p]), torch.from_numpy(is_in[p]), torch.from_numpy(idx[p])


@pytest.mark.parametrize("name", ["balanced", "imbalanced_1000_37", "ties_round_1", "ties_few_integers",
                                  "raw_logits_large_range", "n_in_60_ties"])
def test_oodmetrics_accumulates_to_functional(name):
    s_in, s_out = _case(name)
    metric = OODMetrics()
    for scores, is_in, _ in _mixed_batches(s_in, s_out, batch=13):
        metric.update(scores.float() if name == "balanced" else scores, is_in)
    got = metric.compute()
    if name == "balanced":  # updated with float32 scores
        s_in, s_out = s_in.astype(np.float32), s_out.astype(np.float32)
    _dict_close(got, ood_metrics(s_in, s_out), atol=1e-12)
    _dict_close(got, reference_metrics(s_in, s_out))


def test_oodmetrics_keeps_float64_precision():
    """Scores that differ only below float32 resolution (e.g. ODIN at T = 1000 in float64) must stay distinct."""
    s_in = 0.2 + 1e-11 * np.arange(0, 60, 1.0)
    s_out = 0.2 + 1e-11 * np.arange(-30.5, 10, 1.0)
    metric = OODMetrics()
    for scores, is_in, _ in _mixed_batches(s_in, s_out, batch=9):
        metric.update(scores, is_in)
    want = reference_metrics(s_in, s_out)
    assert want["auroc"] > 0.9  # would be 0.5 if the scores were rounded to float32
    _dict_close(metric.compute(), want)
    _dict_close(ood_metrics(s_in, s_out), want)


def test_oodmetrics_scalar_target_per_batch():
    s_in, s_out = _case("ties_round_2_probs")
    metric = OODMetrics()
    for chunk in np.array_split(s_out, 5):
        metric.update(torch.from_numpy(chunk), False)
    for chunk in np.array_split(s_in, 3):
        metric.update(torch.from_numpy(chunk), torch.tensor(True))
    _dict_close(metric.compute(), reference_metrics(s_in, s_out))


def test_oodmetrics_no_sigmoid_on_out_of_range_scores():
    """Raw logits and negative scores: per-batch sigmoids would change ties and the result; none is applied."""
    rng = np.random.default_rng(3)
    s_in = np.round(rng.normal(2.0, 5.0, 211), 0)   # many values outside [0, 1], with ties
    s_out = np.round(rng.normal(-1.0, 5.0, 157), 0)
    # batch 0 lies fully inside [0, 1], the others do not: an auto-sigmoid would treat batches differently
    metric = OODMetrics()
    metric.update(torch.tensor([0.2, 0.9, 0.5], dtype=torch.float64), torch.tensor([True, True, False]))
    for scores, is_in, _ in _mixed_batches(s_in, s_out, batch=32, seed=1):
        metric.update(scores, is_in)
    all_in = np.concatenate([[0.2, 0.9], s_in])
    all_out = np.concatenate([[0.5], s_out])
    got = metric.compute()
    _dict_close(got, ood_metrics(all_in, all_out), atol=1e-12)
    _dict_close(got, reference_metrics(all_in, all_out))
    # a sigmoid of the scores would saturate (1 / (1 + exp(-x)) == 1.0 for x > 37) and add ties; ours does not
    big_in, big_out = np.array([40.0, 50.0, 60.0]), np.array([38.0, 39.0, 45.0])
    metric = OODMetrics()
    metric.update(torch.from_numpy(np.concatenate([big_in, big_out])), torch.tensor([1, 1, 1, 0, 0, 0]).bool())
    _dict_close(metric.compute(), reference_metrics(big_in, big_out))


def _distributed_sampler_padding(n_total: int, world: int) -> list[list[int]]:
    """DistributedSampler(shuffle=False, drop_last=False): pad by repeating the first indices."""
    total = math.ceil(n_total / world) * world
    indices = list(range(n_total))
    indices += indices[: total - n_total]
    return [indices[r:total:world] for r in range(world)]


@pytest.mark.parametrize("world", [2, 3, 8])
def test_oodmetrics_duplicate_indexes_count_once(world):
    s_in, s_out = _case("ties_round_1")
    s_in, s_out = s_in[:101], s_out[:54]  # 155 samples: not divisible by 2, 3 or 8 -> padding
    scores = np.concatenate([s_in, s_out])
    is_in = np.concatenate([np.ones(len(s_in), bool), np.zeros(len(s_out), bool)])
    per_rank = _distributed_sampler_padding(len(scores), world)
    assert sum(map(len, per_rank)) > len(scores)  # some samples really are repeated

    with_idx, without_idx = OODMetrics(), OODMetrics()
    for rank_indices in per_rank:
        for start in range(0, len(rank_indices), 7):
            i = np.array(rank_indices[start:start + 7])
            with_idx.update(torch.from_numpy(scores[i]), torch.from_numpy(is_in[i]), torch.from_numpy(i))
            without_idx.update(torch.from_numpy(scores[i]), torch.from_numpy(is_in[i]))
    want = reference_metrics(s_in, s_out)
    _dict_close(with_idx.compute(), want)
    # the padded duplicates do change the result when no indexes are given (the test is not vacuous)
    padded_in = np.concatenate([scores[r] for r in per_rank])[np.concatenate([is_in[r] for r in per_rank])]
    padded_out = np.concatenate([scores[r] for r in per_rank])[~np.concatenate([is_in[r] for r in per_rank])]
    _dict_close(without_idx.compute(), reference_metrics(padded_in, padded_out))


def test_oodmetrics_same_index_in_and_out_are_different_samples():
    """In-distribution and OOD sets may each number their samples from 0: only (index, class) repeats merge."""
    s_in, s_out = _case("n_in_20")
    metric = OODMetrics()
    metric.update(torch.from_numpy(s_in), True, torch.arange(len(s_in)))
    metric.update(torch.from_numpy(s_out), False, torch.arange(len(s_out)))
    metric.update(torch.from_numpy(s_in[:5]), True, torch.arange(5))  # padding duplicates
    metric.update(torch.from_numpy(s_out[-3:]), False, torch.arange(len(s_out) - 3, len(s_out)))
    _dict_close(metric.compute(), reference_metrics(s_in, s_out))


def test_oodmetrics_simulated_two_rank_sync():
    """Two ranks' states gathered by torchmetrics' dist sync (a fake all_gather) give the global result."""
    s_in, s_out = _case("ties_round_2_probs")
    scores = np.concatenate([s_in, s_out])
    is_in = np.concatenate([np.ones(len(s_in), bool), np.zeros(len(s_out), bool)])
    ranks = _distributed_sampler_padding(len(scores), 2)

    other = OODMetrics()
    for start in range(0, len(ranks[1]), 16):
        i = np.array(ranks[1][start:start + 16])
        other.update(torch.from_numpy(scores[i]), torch.from_numpy(is_in[i]), torch.from_numpy(i))
    other_state = {torch.float64: torch.cat(other.scores), torch.bool: torch.cat(other.targets),
                   torch.int64: torch.cat(other.indexes)}

    def fake_all_gather(tensor, group=None):
        return [tensor, other_state[tensor.dtype]]

    metric = OODMetrics(dist_sync_fn=fake_all_gather, distributed_available_fn=lambda: True)
    for start in range(0, len(ranks[0]), 16):
        i = np.array(ranks[0][start:start + 16])
        metric.update(torch.from_numpy(scores[i]), torch.from_numpy(is_in[i]), torch.from_numpy(i))
    _dict_close(metric.compute(), reference_metrics(s_in, s_out))


def test_oodmetrics_reset():
    metric = OODMetrics()
    metric.update(torch.tensor([5.0, -5.0]), torch.tensor([False, True]))
    metric.reset()
    s_in, s_out = _case("single_in_single_out")
    metric.update(torch.tensor([s_in[0], s_out[0]]), torch.tensor([True, False]))
    _dict_close(metric.compute(), reference_metrics(s_in, s_out))


@pytest.mark.filterwarnings("ignore:.*compute.*before the.*update:UserWarning")
def test_oodmetrics_compute_before_update_raises():
    with pytest.raises(ValueError, match="before any update"):
        OODMetrics().compute()


def test_oodmetrics_one_class_only_raises_empty():
    metric = OODMetrics()
    metric.update(torch.tensor([0.1, 0.2]), True)
    with pytest.raises(ValueError, match="empty"):
        metric.compute()


def test_oodmetrics_nan_raises():
    metric = OODMetrics()
    metric.update(torch.tensor([0.1, float("nan"), 0.3]), torch.tensor([True, True, False]))
    with pytest.raises(ValueError, match="NaN"):
        metric.compute()


def test_oodmetrics_mismatched_targets_raise():
    with pytest.raises(ValueError, match="3 scores but 2 targets"):
        OODMetrics().update(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([True, False]))


def test_row_wise_metrics_equal_the_sklearn_reference_on_tied_scores() -> None:
    """metric_rows (the tuning grid's and the bootstrap's vectorized form) equals the scikit-learn reference for
    every row (1e-12), on heavily tied scores."""
    g = torch.Generator().manual_seed(3)
    s_in = torch.randint(0, 30, (7, 101), generator=g).double() / 7  # heavy ties, n_in not a multiple of 20
    s_out = torch.randint(0, 25, (7, 64), generator=g).double() / 7
    rows = metric_rows(s_in, s_out)
    for row in range(7):
        expected = reference_metrics(s_in[row].numpy(), s_out[row].numpy())
        _dict_close({name: float(values[row]) for name, values in rows.items()}, expected, atol=1e-12)


def test_scores_of_one_column_or_row_are_accepted_and_other_matrices_refused() -> None:
    """[n], [n, 1] and [1, n] give the same metrics; a [2, n] array (two settings) is refused instead of being
    pooled into one set of scores."""
    s_in, s_out = _case("balanced")
    expected = ood_metrics(s_in, s_out)
    assert ood_metrics(s_in[:, None], s_out[None, :]) == expected
    with pytest.raises(ValueError, match=r"in_scores has shape \(2, 250\): give one score per image"):
        ood_metrics(s_in.reshape(2, 250), s_out)
    with pytest.raises(ValueError, match="out_scores has shape"):
        ood_metrics(s_in, s_out.reshape(1, 2, 250))
