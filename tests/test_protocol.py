"""odin_pl.protocol: the plan, the run's scorer and score cache, typed records (the numbers are checked against a
plain loop in test_grid_and_ddp.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from datamodules import DigitsDataModule
from odin_pl.errors import UserError
from odin_pl.metrics import ood_metrics
from odin_pl.protocol import MethodGrid, ModelScorer, ProtocolPlan, run_protocol
from odin_pl.training.module import ImageClassifier

METHODS = (MethodGrid.of("msp"), MethodGrid.of("odin", {"temperature": (1.0, 100.0), "epsilon": (0.0, 0.01)}))


def _data() -> tuple[nn.Module, TensorDataset, dict[str, TensorDataset]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4)).double().eval()
    in_set = TensorDataset(torch.randn(30, 3, 2, 2, dtype=torch.float64), torch.zeros(30))
    ood = {"a": TensorDataset(2 * torch.randn(24, 3, 2, 2, dtype=torch.float64), torch.zeros(24)),
           "b": TensorDataset(torch.rand(20, 3, 2, 2, dtype=torch.float64), torch.zeros(20))}
    return model, in_set, ood


class MemoryCache:
    """A score cache in memory that counts what it is asked."""

    def __init__(self) -> None:
        self.passes: dict[tuple[str, str], tuple[dict, dict]] = {}
        self.loaded: list[tuple[str, str]] = []

    def load(self, name, split, plan):
        saved = self.passes.get((name, split))
        if saved is not None and saved[0] == {m: list(s) for m, s in plan.items()}:
            self.loaded.append((name, split))
            return saved[1]
        return None

    def save(self, name, split, plan, scores):
        self.passes[name, split] = ({m: list(s) for m, s in plan.items()}, dict(scores))

    def load_ranges(self, name, split, plan, n):
        return {}

    def save_range(self, name, split, plan, start, stop, scores):
        pass


def test_protocol_rejects_an_empty_ood_set() -> None:
    datamodule = DigitsDataModule()
    datamodule.setup("test")
    model = ImageClassifier("hendrycks_mlp", image_spec=datamodule.image_spec.to_dict(), lr_milestones=[]).eval()
    empty = TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0))
    with pytest.raises(ValueError, match="'empty' is empty"):
        run_protocol(ProtocolPlan(METHODS), datamodule.test_set, {"empty": empty}, ModelScorer(model))


def test_a_plan_is_checked_when_it_is_made() -> None:
    with pytest.raises(UserError, match="no method to evaluate"):
        ProtocolPlan(())
    with pytest.raises(UserError, match="unknown mode 'best'"):
        ProtocolPlan(METHODS, mode="best")
    with pytest.raises(UserError, match="goes with mode 'transfer'"):
        ProtocolPlan(METHODS, mode="transfer")
    with pytest.raises(UserError, match="goes with mode 'transfer'"):
        ProtocolPlan(METHODS, tune_on="a")
    with pytest.raises(UserError, match="tuning size must be positive"):
        ProtocolPlan(METHODS, n_tune=0)
    assert [m.name for m in ProtocolPlan(METHODS).tuned] == ["odin"]
    assert ProtocolPlan(METHODS, mode="fixed").tuned == []


def test_the_scorer_checks_the_model_once_when_it_is_built() -> None:
    model, _, _ = _data()
    with pytest.raises(UserError, match="the model is in training mode"):
        ModelScorer(model.train())
    with pytest.raises(UserError, match="batch size must be >= 1"):
        ModelScorer(model.eval(), batch_size=0)


def test_the_cache_gives_back_every_pass_and_the_scorer_is_not_asked_again() -> None:
    model, in_set, ood = _data()
    calls: list[str] = []
    scorer = ModelScorer(model, batch_size=7)

    def counted(dataset, plan, **options):
        calls.append(options["desc"])
        return scorer(dataset, plan, **options)

    cache, plan = MemoryCache(), ProtocolPlan(METHODS, n_tune=5, seed=3)
    first = run_protocol(plan, in_set, ood, counted, cache)
    passes = [("in_distribution", "tune"), ("a", "tune"), ("b", "tune"), ("in_distribution", "test"), ("a", "test"),
              ("b", "test")]
    assert [c.split(" ")[0] for c in calls] == [f"{n}/{s}" for n, s in passes] and set(cache.passes) == set(passes)
    calls.clear()
    again = run_protocol(plan, in_set, ood, counted, cache)
    assert calls == [] and cache.loaded == passes and again.records == first.records
    # Without a cache nothing is kept, and the numbers are the same.
    assert run_protocol(plan, in_set, ood, scorer).records == first.records


def test_records_are_typed_and_their_dicts_are_the_result_files_fields() -> None:
    model, in_set, ood = _data()
    result = run_protocol(ProtocolPlan(METHODS, mode="cross", n_tune=5), in_set, ood, ModelScorer(model))
    assert len(result.records) == 2 * (1 + 2)  # per set: MSP once, ODIN once per tuning set
    odin = next(r for r in result.records if r.ood == "b" and r.method == "odin" and r.tuned_on == "a")
    selection = result.selections["odin"]["a"]
    assert odin.setting == selection.setting and odin.params == dict(zip(("temperature", "epsilon"), odin.setting))
    in_scores, out_scores = result.in_test_scores[odin.key], result.ood_test_scores["b"][odin.key]
    assert odin.metrics == ood_metrics(in_scores, out_scores)
    assert (odin.n_in, odin.n_out) == (len(in_scores), len(out_scores)) == (25, 15)
    assert list(odin.to_dict()) == ["ood", "method", "protocol", *odin.metrics, "temperature", "epsilon", "n_in",
                                    "n_out", "tuned_on", "tuning_fpr_at_95_tpr", "grid_edge"]
    assert odin.to_dict()["tuning_fpr_at_95_tpr"] == selection.tuning_fpr
    msp = next(r for r in result.records if r.ood == "b" and r.method == "msp")
    assert msp.tuned_on is None and "grid_edge" not in msp.to_dict()
    # The main table: each set's own tuning, and the views of its test scores.
    main = result.main_records()
    assert {name: {m: r.tuned_on for m, r in by.items()} for name, by in main.items()} == {
        "a": {"msp": None, "odin": "a"}, "b": {"msp": None, "odin": "b"}}
    s_in, s_out = result.test_scores["b"]["odin"]
    assert torch.equal(s_out, result.ood_test_scores["b"][main["b"]["odin"].key]) and len(s_in) == 25
