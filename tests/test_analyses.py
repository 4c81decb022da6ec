"""The paper analyses (odin_pl.analyses): their math against direct float64 computations, each analysis end to end
on a tiny model, and ``evaluate.py --analyses all`` on the quickstart checkpoint."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import evaluate
from odin_pl.analyses import ANALYSES, AnalysisContext, parse_analyses, run_analyses, scalar_metrics
from odin_pl.analyses.distances import mmd2_and_energy
from odin_pl.analyses.gradients import gradient_norms
from odin_pl.analyses.logit_stats import u1_u2
from odin_pl.analyses.score_cache import ScoreCache
from odin_pl.analyses.taylor import convergence_order, expansion_error, proposition1_gap, second_order_score
from odin_pl.analyses.tuning_size import appendix_h_split, tuning_sizes
from odin_pl.metrics import ood_metrics
from odin_pl.protocol import MethodGrid, ModelScorer, ProtocolPlan, run_protocol
from odin_pl.methods.msp import max_softmax

PNG = b"\x89PNG\r\n\x1a\n"


def _logits(rows: int = 40, classes: int = 7, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, classes, generator=g, dtype=torch.float64) * 4


def test_u1_u2_match_a_direct_computation_and_u2_is_variance_plus_squared_mean() -> None:
    logits = _logits()
    logits[0] = torch.tensor([1.0, 1.0, 3.0, 3.0, -2.0, 0.0, 3.0])  # a tied maximum: one of the tied is y_hat
    u1, u2 = u1_u2(logits)
    for row, (a, b) in zip(logits.numpy(), zip(u1.tolist(), u2.tolist())):
        top = int(np.argmax(row))
        gaps = np.array([row[top] - row[i] for i in range(len(row)) if i != top])
        assert a == pytest.approx(gaps.sum() / (len(row) - 1), abs=1e-12)
        assert b == pytest.approx((gaps**2).sum() / (len(row) - 1), abs=1e-12)
        assert b == pytest.approx(np.var(gaps) + np.mean(gaps) ** 2, abs=1e-12)  # population variance (ddof=0)


def _naive_distances(v: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    dist = lambda a, b: float(np.sqrt(((a - b) ** 2).sum()))  # noqa: E731
    m, n = len(v), len(w)
    union = np.concatenate([v, w])
    two_sigma2 = float(np.median([dist(union[i], union[j]) for i in range(m + n) for j in range(i + 1, m + n)]))
    k = lambda a, b: np.exp(-dist(a, b) ** 2 / two_sigma2)  # noqa: E731
    k_vv = sum(k(v[i], v[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    k_ww = sum(k(w[i], w[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    k_vw = sum(k(v[i], w[j]) for i in range(m) for j in range(n)) / (m * n)
    e_vv = sum(dist(v[i], v[j]) for i in range(m) for j in range(i + 1, m)) / (m * (m - 1) / 2)
    e_ww = sum(dist(w[i], w[j]) for i in range(n) for j in range(i + 1, n)) / (n * (n - 1) / 2)
    e_vw = sum(dist(v[i], w[j]) for i in range(m) for j in range(n)) / (m * n)
    return k_vv + k_ww - 2 * k_vw, 2 * e_vw - e_vv - e_ww


@pytest.mark.parametrize("m, n", [(30, 30), (6, 9)])  # 30 rows: torch.cdist takes its matrix-product path
def test_mmd_and_energy_equal_a_naive_float64_double_loop(m: int, n: int) -> None:
    g = torch.Generator().manual_seed(m)
    v = torch.rand(m, 1, 4, 4, generator=g, dtype=torch.float64)
    w = torch.rand(n, 1, 4, 4, generator=g, dtype=torch.float64) * 0.7 + 0.2
    mmd2, energy = _naive_distances(v.flatten(1).numpy(), w.flatten(1).numpy())
    result = mmd2_and_energy(v, w)
    assert result["mmd2"] == pytest.approx(mmd2, abs=1e-9)
    assert result["energy"] == pytest.approx(energy, abs=1e-9)


def test_mmd_is_near_zero_for_one_distribution_and_clearly_positive_for_two() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 200, 64, generator=g)
    other = (torch.randn(200, 64, generator=g) * 0.15 + 0.5).clamp(0, 1)
    same, different = mmd2_and_energy(a, b), mmd2_and_energy(a, other)
    assert abs(same["mmd2"]) < 2e-3 and different["mmd2"] > 20 * abs(same["mmd2"]) + 0.01
    assert different["energy"] > 10 * abs(same["energy"])


def test_second_order_expansion_error_shrinks_like_one_over_t_cubed() -> None:
    logits = _logits()
    for t in (2.0, 10.0):  # where the plain differences are exact enough, the cancellation-free forms equal them
        naive = max_softmax(logits, t) - second_order_score(logits, t)
        torch.testing.assert_close(expansion_error(logits, t), naive, rtol=1e-9, atol=1e-15)
        n = logits.shape[1]
        u1, _ = u1_u2(logits)
        naive_gap = t * (n - 1 / max_softmax(logits, t)) - (n - 1) * u1
        torch.testing.assert_close(proposition1_gap(logits, t), naive_gap, rtol=1e-9, atol=1e-12)
    errors = {t: expansion_error(logits, t).abs().max().item() for t in (5000.0, 10000.0)}
    assert errors[5000.0] / errors[10000.0] == pytest.approx(8, rel=2e-3)
    assert convergence_order(errors) == pytest.approx(3, abs=3e-3)
    limit = {t: proposition1_gap(logits, t).abs().max().item() for t in (5000.0, 10000.0)}
    assert limit[5000.0] / limit[10000.0] == pytest.approx(2, rel=2e-3)  # Proposition 1: error ~ (N-1) U2 / (2T)


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GELU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()


def test_gradient_norm_equals_float64_autograd_with_respect_to_pixels() -> None:
    model = _cnn().double()
    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.5, 1.3])
    pixels = torch.rand(6, 3, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = (pixels - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    with torch.inference_mode():  # as under Lightning's test loop
        norms = gradient_norms(model, x, (1.0, 1000.0), std)
    for row, t in enumerate((1.0, 1000.0)):
        for i in range(len(pixels)):
            p = pixels[i:i + 1].clone().requires_grad_(True)
            logits = model((p - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
            log_s = F.log_softmax(logits / t, dim=1).max()
            (grad,) = torch.autograd.grad(log_s, p)
            assert norms[row, i].item() == pytest.approx(grad.abs().sum().item(), rel=1e-12)
    assert not any(p.grad is not None for p in model.parameters())


def test_score_cache_scores_only_missing_pairs() -> None:
    calls = []
    a, b = ("odin", (1.0, 0.0)), ("energy", (2.0,))

    def scorer(indices, keys):
        calls.append((indices.tolist(), list(keys)))
        return torch.tensor([[setting[0] * 100 + i for i in indices.tolist()] for _, setting in keys])

    cache = ScoreCache(6, scorer)
    cache.add(torch.tensor([0, 1, 2]), [a, b], torch.tensor([[0.0, 1, 2], [200, 201, 202]]))
    cache.add(torch.tensor([3, 4]), [("odin", [1, 0])], torch.tensor([[3.0, 4]]))  # the same key, spelt otherwise
    got = cache.get(torch.tensor([4, 0, 5]), [a, b])
    assert got.tolist() == [[4, 0, 105], [204, 200, 205]]
    assert sorted(calls) == [([4], [b]), ([5], [a, b])] and cache.computed == 3
    cache.get(torch.tensor([5, 4]), [b])
    assert len(calls) == 2


def test_appendix_h_split_contains_the_protocol_tuning_split() -> None:
    protocol_tune = torch.randperm(10_000, generator=torch.Generator().manual_seed(3))[:1000].sort().values
    tune, test = appendix_h_split(10_000, protocol_tune, seed=1)
    assert len(tune) == 2000 and len(test) == 8000 and not set(tune.tolist()) & set(test.tolist())
    assert set(protocol_tune.tolist()) <= set(tune.tolist())
    assert tuning_sizes(len(tune)) == list(range(200, 2001, 200))
    small_protocol = torch.arange(0, 598, 2)  # 299 of 599 images (the quickstart's in-distribution test set)
    small_tune, small_test = appendix_h_split(599, small_protocol, seed=1)
    assert (len(small_tune), len(small_test)) == (119, 480) and set(small_tune.tolist()) <= set(small_protocol.tolist())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[AnalysisContext, dict[str, list[Path]]]:
    """Every analysis on a tiny MLP (8x8 grayscale), random in-distribution images and two OOD sets."""
    torch.manual_seed(0)
    model = timm.create_model("hendrycks_mlp", num_classes=10, img_size=8).eval()
    g = torch.Generator().manual_seed(0)
    mean, std = (0.3,), (0.4,)
    normalize = lambda p: (p - mean[0]) / std[0]  # noqa: E731
    in_set = TensorDataset(normalize(torch.rand(120, 1, 8, 8, generator=g)), torch.randint(0, 10, (120,), generator=g))
    ood = {"dark": TensorDataset(normalize(torch.rand(100, 1, 8, 8, generator=g) * 0.3), -torch.ones(100)),
           "noise": TensorDataset(normalize(torch.rand(90, 1, 8, 8, generator=g) ** 3), -torch.ones(90))}
    methods = (MethodGrid.of("msp"), MethodGrid.of("odin", {"temperature": (1.0, 10.0, 1000.0),
                                                            "epsilon": (0.0, 0.002, 0.004)}))
    result = run_protocol(ProtocolPlan(methods, n_tune=10), in_set, ood, ModelScorer(model, std, batch_size=64))
    context = AnalysisContext(model=model, input_mean=mean, input_std=std, in_dataset=in_set, ood_datasets=ood,
                              result=result, output_dir=tmp_path_factory.mktemp("analyses"),
                              batch_size=64, num_images=50, class_names=[f"c{i}" for i in range(10)])
    return context, run_analyses(parse_analyses("all"), context)


@pytest.mark.parametrize("name", list(ANALYSES))
def test_each_analysis_writes_its_figure_and_numbers(tiny_run, name: str) -> None:
    context, files = tiny_run
    assert [p.name for p in files[name].paths] == [f"{name}.json", f"{name}.png"]
    assert files[name].figure_path.read_bytes()[:8] == PNG
    data = json.loads(files[name].json_path.read_text())
    assert data == json.loads(json.dumps(files[name].numbers))  # the numbers returned are those written
    assert data["analysis"] == name and scalar_metrics(data, name)


def _data(tiny_run, name: str) -> dict:
    return json.loads((tiny_run[0].output_dir / f"{name}.json").read_text())


def test_sweeps_are_the_tuning_split_metrics(tiny_run) -> None:
    context, _ = tiny_run
    data = _data(tiny_run, "sweeps")
    assert data["split"] == "tuning" and not data["skipped"] and len(data["lines"]) == 3
    line = data["lines"]["vs_epsilon_at_T=1000"]
    row = context.result.plan.method("odin").settings.index((1000.0, 0.004))
    expected = ood_metrics(context.result.tuning_scores["odin"]["in_distribution"][row],
                           context.result.tuning_scores["odin"]["dark"][row])
    assert line["sets"]["dark"]["auroc"][-1] == expected["auroc"]
    selection = context.result.selections["odin"]["dark"]
    assert line["sets"]["dark"]["fpr_at_95_tpr"] == selection.fpr_grid[-1]  # T = 1000 is the grid's last row


def test_analysis_numbers_agree_with_the_protocol(tiny_run) -> None:
    context, _ = tiny_run
    result = context.result
    odin = {r.ood: r.to_dict() for r in result.records if r.method == "odin"}
    threshold = _data(tiny_run, "threshold")["sets"]["noise"]["odin"]
    assert threshold["fpr_at_95_tpr"] == odin["noise"]["fpr_at_95_tpr"]
    accuracy = _data(tiny_run, "accuracy")
    assert accuracy["n"] == 110 and len(accuracy["tpr"]) == 50 and accuracy["tpr"][-1] == 0.99
    distances = _data(tiny_run, "distances")["sets"]
    assert list(distances) == sorted(distances, key=lambda s: -distances[s]["mmd2"]) and distances["dark"]["m"] == 50
    tuning = _data(tiny_run, "tuning-size")
    dark = tuning["sets"]["dark"]
    assert dark["tuning_sizes"] == list(range(2, 21, 2)) and tuning["notes"]
    # At the protocol's tuning size the OOD tuning images are the protocol's own: the same selection.
    assert dark["methods"]["odin"]["params"][4] == result.selections["odin"]["dark"].params
    assert list(dark["methods"]) == ["odin"] and "baseline_fpr_at_95_tpr" in dark
    # Only images of the protocol's test split miss scores: the OOD tuning images beyond the protocol's over the
    # grid (but its chosen setting), and the test images at settings chosen here but not by the protocol (the
    # baseline's are known). The in-distribution tuning split is the protocol's (no new scores); its test split
    # misses the settings no OOD set reported.
    chosen = {name: {(p["temperature"], p["epsilon"]) for p in v["methods"]["odin"]["params"]}
              for name, v in tuning["sets"].items()}
    known = {name: {(r["temperature"], r["epsilon"])} for name, r in odin.items()}
    extra = dark["n_tune"] - len(result.splits["dark"].tune)
    assert tuning["newly_scored_pairs"]["dark"] == (extra * (len(result.plan.method("odin").settings) - 1)
                                                    + dark["n_test"] * len(chosen["dark"] - known["dark"]))
    in_known = {s for m, s in result.in_test_scores if m == "odin"}
    in_missing = set.union(*chosen.values()) - in_known
    assert tuning["in_distribution"]["n_test"] == 110
    assert tuning["newly_scored_pairs"]["in_distribution"] == 110 * len(in_missing)
    taylor = _data(tiny_run, "taylor")
    assert taylor["order_equation3"] == pytest.approx(3, abs=0.01)
    assert taylor["order_proposition1"] == pytest.approx(1, abs=0.01)


def test_evaluate_runs_all_analyses_and_logs_their_numbers(quickstart_ckpt: str, tmp_path) -> None:
    evaluate.main(["--ckpt", quickstart_ckpt, "--output.dir", str(tmp_path), "--ood.sets", "gaussian,photos",
                   "--ood.num_images", "100", "--tuning.temperatures", "1,1000", "--tuning.epsilons", "0,0.002",
                   "--analyses.names", "all", "--analyses.images", "60"])
    files = {p.name for p in (tmp_path / "analyses").iterdir()}
    assert files == {f"{name}.{ext}" for name in ANALYSES for ext in ("json", "png")}
    sweeps = json.loads((tmp_path / "analyses" / "sweeps.json").read_text())
    assert sweeps["lines"]["vs_T_at_epsilon=0"]["values"] == [1.0, 1000.0]
    # WANDB_MODE=disabled: CSV, in a folder named after the training run, the mode, methods, sets, a fingerprint
    logged = next(tmp_path.glob("quickstart-seed0-paper-msp+odin-gaussian+photos-??????/*/metrics.csv")).read_text(
    ).splitlines()[0]
    assert "analyses/distances/sets/gaussian/mmd2" in logged and "eval/ood/gaussian/odin/auroc" in logged


def test_evaluate_rejects_unknown_analyses_before_scoring(quickstart_ckpt: str, tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown analysis 'nope'"):
        evaluate.main(["protocol", "--ckpt", quickstart_ckpt, "--output.dir", str(tmp_path), "--analyses.names",
                       "sweeps,nope", "--output.logger", "false"])
    assert not (tmp_path / "results.json").exists()


def test_generic_analyses_run_for_other_methods_and_odin_ones_refuse(tiny_run, tmp_path) -> None:
    """threshold, accuracy, distances and tuning-size for MSP and a tuned Energy; sweeps (ODIN's) refuses."""
    base, _ = tiny_run
    methods = [MethodGrid.of("msp"), MethodGrid.of("energy", {"temperature": (1.0, 10.0, 100.0)})]
    result = run_protocol(ProtocolPlan(methods, n_tune=10), base.in_dataset, base.ood_datasets,
                          ModelScorer(base.model, base.input_std, batch_size=64))
    context = replace(base, result=result, output_dir=tmp_path)
    outputs = run_analyses(["threshold", "accuracy", "distances", "tuning-size"], context)
    energy = {r.ood: r.to_dict() for r in result.records if r.method == "energy"}
    threshold = outputs["threshold"].numbers["sets"]["dark"]
    assert list(threshold) == ["energy"] and threshold["energy"]["fpr_at_95_tpr"] == energy["dark"]["fpr_at_95_tpr"]
    curves = {"baseline (MSP)", *(f"energy T={r['temperature']:g}" for r in energy.values())}
    assert set(outputs["accuracy"].numbers["curves"]) == curves
    assert set(outputs["distances"].numbers["sets"]["dark"]["fpr_at_95_tpr"]) == {"msp", "energy"}
    sizes = outputs["tuning-size"].numbers["sets"]["dark"]
    assert sizes["methods"]["energy"]["params"][4] == result.selections["energy"]["dark"].params
    with pytest.raises(ValueError, match="'sweeps' studies ODIN's T and epsilon"):
        run_analyses(["sweeps"], context)
