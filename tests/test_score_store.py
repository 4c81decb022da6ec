"""odin_pl.score_store: validated, atomically written score files; the protocol's load_scores hook."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from odin_pl.protocol import run_protocol
from odin_pl.score_store import ScoreStore
from odin_pl.tuning import Grid

PLAN = {"msp": [()], "odin": [(1.0, 0.0), (10.0, 0.002)]}


def test_store_returns_scores_only_for_the_same_plan_and_context(tmp_path) -> None:
    context, sets = {"weights_sha256": "abc", "seed": 0}, {"gaussian": {"source": "gaussian", "n": 20}}
    store = ScoreStore(tmp_path, context, sets)
    scores = {"msp": torch.rand(1, 10), "odin": torch.rand(2, 10)}
    store.save("gaussian", "tune", PLAN, scores)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gaussian__tune.pt"]  # no temporary file left
    loaded = store.load("gaussian", "tune", {"msp": [[]], "odin": [(1, 0), (10, 0.002)]})
    assert loaded.keys() == scores.keys() and all(torch.equal(loaded[m], scores[m]) for m in scores)
    assert store.reused == ["gaussian__tune.pt"]
    assert store.load("gaussian", "tune", {"odin": PLAN["odin"]}) is None  # another plan
    assert store.load("gaussian", "tune", {**PLAN, "odin": PLAN["odin"][:1]}) is None
    assert store.load("gaussian", "test", PLAN) is None
    assert ScoreStore(tmp_path, {**context, "weights_sha256": "def"}, sets).load("gaussian", "tune", PLAN) is None
    assert ScoreStore(tmp_path, context, {"gaussian": {"source": "gaussian", "n": 21}}).load(
        "gaussian", "tune", PLAN) is None
    (tmp_path / "uniform__tune.pt").write_bytes(b"truncated")
    assert store.load("uniform", "tune", PLAN) is None
    saved = torch.load(tmp_path / "gaussian__tune.pt")
    assert saved["plan"] == {"msp": [[]], "odin": [[1.0, 0.0], [10.0, 0.002]]}
    assert saved["context"] == {**context, "set": sets["gaussian"]}
    # A file of the version before the method registry (one ODIN settings list) is scored again, not misread.
    torch.save({"settings": PLAN["odin"], "scores": scores["odin"], "context": saved["context"]},
               tmp_path / "gaussian__tune.pt")
    assert store.load("gaussian", "tune", PLAN) is None


def test_protocol_uses_loaded_scores_instead_of_scoring(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5)).double().eval()
    g = torch.Generator().manual_seed(1)
    in_set = TensorDataset(torch.randn(30, 3, 2, 2, generator=g, dtype=torch.float64), torch.zeros(30))
    ood = {"ood": TensorDataset(torch.randn(24, 3, 2, 2, generator=g, dtype=torch.float64) * 2, -torch.ones(24))}
    options = dict(input_std=(0.5, 0.5, 0.5), grid=Grid((1.0, 100.0), (0.0, 0.01)), batch_size=8, progress=False)
    store = ScoreStore(tmp_path, {}, {})
    first = run_protocol(model, in_set, ood, on_scores=store.save, **options)
    computed = []
    again = run_protocol(model, in_set, ood, on_scores=lambda *args: computed.append(args[:2]),
                         load_scores=store.load, **options)
    assert computed == [] and len(store.reused) == 4 and again.records == first.records
    (tmp_path / "ood__test.pt").unlink()
    partly = run_protocol(model, in_set, ood, on_scores=lambda *args: computed.append(args[:2]),
                          load_scores=store.load, **options)
    assert computed == [("ood", "test")] and partly.records == first.records
    with pytest.raises(ValueError, match="load_scores gave scores of shapes"):
        run_protocol(model, in_set, ood, load_scores=lambda *args: {"msp": torch.zeros(1, 3)}, **options)
