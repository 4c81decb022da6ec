"""odin_pl.evaluation.score_store: validated, atomically written score files, chunks of a pass saved as it goes; the
store as the protocol's score cache (whole passes and chunks reused, never, or required)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import free_port, interrupt_scoring
from torch import nn
from torch.utils.data import TensorDataset

from odin_pl.evaluation import score_store
from odin_pl.protocol import run as protocol
from odin_pl.fingerprint import dataset_sha256, tensors_sha256
from odin_pl.methods import score_batch
from odin_pl.errors import UserError
from odin_pl.protocol import MethodGrid, ModelScorer, ProtocolPlan, run_protocol
from odin_pl.evaluation.score_store import ScoreStore

PLAN = {"msp": [()], "odin": [(1.0, 0.0), (10.0, 0.002)]}
CONTEXT = {"weights_sha256": "abc", "seed": 0}
SETS = {"gaussian": {"source": "gaussian", "n": 20, "images_sha256": "1a2b"}}
RANGES = {"msp": (0.2, 1.0), "odin": (0.2, 1.0)}


def _scores(n: int = 10) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    return {"msp": 0.2 + 0.8 * torch.rand(1, n, generator=g), "odin": 0.2 + 0.8 * torch.rand(2, n, generator=g)}


def test_store_returns_scores_only_for_the_same_plan_and_context(tmp_path, capsys) -> None:
    store = ScoreStore(tmp_path, CONTEXT, SETS, RANGES)
    scores = _scores()
    store.save("gaussian", "tune", PLAN, scores)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gaussian__tune.pt"]  # no temporary file left
    loaded = store.load("gaussian", "tune", {"msp": [[]], "odin": [(1, 0), (10, 0.002)]})
    assert loaded.keys() == scores.keys() and all(torch.equal(loaded[m], scores[m]) for m in scores)
    assert store.reused == ["gaussian__tune.pt"]
    assert store.load("gaussian", "tune", {"odin": PLAN["odin"]}) is None  # another plan
    assert store.load("gaussian", "tune", {**PLAN, "odin": PLAN["odin"][:1]}) is None
    assert store.load("gaussian", "test", PLAN) is None  # missing: no line
    assert ScoreStore(tmp_path, {**CONTEXT, "weights_sha256": "def"}, SETS).load("gaussian", "tune", PLAN) is None
    assert ScoreStore(tmp_path, {**CONTEXT, "seed": 1}, SETS).load("gaussian", "tune", PLAN) is None
    changed = {"gaussian": {**SETS["gaussian"], "images_sha256": "3c4d"}}
    assert ScoreStore(tmp_path, CONTEXT, changed).load("gaussian", "tune", PLAN) is None
    unknown = {"gaussian": {**SETS["gaussian"], "images_sha256": None}}  # never proven: never reused
    assert ScoreStore(tmp_path, CONTEXT, unknown).load("gaussian", "tune", PLAN) is None
    (tmp_path / "uniform__tune.pt").write_bytes(b"truncated")
    assert store.load("uniform", "tune", PLAN) is None
    assert capsys.readouterr().out.splitlines() == [
        f"{tmp_path.name}/gaussian__tune.pt: it was made for other methods or settings; scoring again",
        f"{tmp_path.name}/gaussian__tune.pt: it was made for other methods or settings; scoring again",
        f"{tmp_path.name}/gaussian__tune.pt: it was made with other weights; scoring again",
        f"{tmp_path.name}/gaussian__tune.pt: it was made with other settings (seed); scoring again",
        f"{tmp_path.name}/gaussian__tune.pt: its images changed since it was saved; scoring again",
        f"{tmp_path.name}/gaussian__tune.pt: the images of its set cannot be fingerprinted, so no saved score can "
        "be proven to match them; scoring again",
        f"{tmp_path.name}/uniform__tune.pt: it cannot be read (damaged, or not a score file); scoring again"]
    saved = torch.load(tmp_path / "gaussian__tune.pt")
    assert saved["plan"] == {"msp": [[]], "odin": [[1.0, 0.0], [10.0, 0.002]]}
    assert saved["context"] == {**CONTEXT, "set": SETS["gaussian"]}
    assert saved["scores_sha256"] == tensors_sha256(scores)
    # A file of an earlier version (no checksum of its scores) is scored again, not misread.
    torch.save({k: v for k, v in saved.items() if k != "scores_sha256"}, tmp_path / "gaussian__tune.pt")
    assert store.load("gaussian", "tune", PLAN) is None
    assert "it is not a score file of this version (one with the SHA-256 of its scores)" in capsys.readouterr().out


def test_a_damaged_file_or_impossible_scores_are_scored_again(tmp_path, capsys) -> None:
    store = ScoreStore(tmp_path, CONTEXT, SETS, RANGES)
    path, scores = tmp_path / "gaussian__tune.pt", _scores()
    store.save("gaussian", "tune", PLAN, scores)
    content = bytearray(path.read_bytes())
    at = content.find(scores["odin"].numpy().tobytes())
    content[at + 5] ^= 0x01  # a flipped bit in a stored score: the file still loads
    path.write_bytes(bytes(content))
    assert not torch.equal(torch.load(path)["scores"]["odin"], scores["odin"])
    assert store.load("gaussian", "tune", PLAN) is None
    assert capsys.readouterr().out == (f"{tmp_path.name}/gaussian__tune.pt: its scores do not match the SHA-256 "
                                       "saved with them (the file was damaged); scoring again\n")
    one = torch.tensor(1.0)
    for value, reason in [(float("nan"), "its msp scores contain NaN or Inf"),
                          (float("-inf"), "its msp scores contain NaN or Inf"),
                          (1.0 + 5 * torch.finfo(torch.float32).eps, "its msp scores lie in [1.0000006, 1.0000006], "
                                                                    "outside the method's range [0.2, 1]"),
                          (0.1, "its msp scores lie in [0.1, 0.1], outside the method's range [0.2, 1]")]:
        store.save("gaussian", "tune", PLAN, {**scores, "msp": torch.full((1, 10), value)})
        assert store.load("gaussian", "tune", PLAN) is None
        assert reason in capsys.readouterr().out
    rounded = torch.nextafter(torch.nextafter(one, 2 * one), 2 * one)  # 2 units in the last place above 1
    store.save("gaussian", "tune", PLAN, {**scores, "msp": rounded.expand(1, 10)})
    assert torch.equal(store.load("gaussian", "tune", PLAN)["msp"], rounded.expand(1, 10))


def test_a_pass_is_saved_in_chunks_that_its_whole_file_replaces(tmp_path, monkeypatch, capsys) -> None:
    store, full = ScoreStore(tmp_path, CONTEXT, SETS, RANGES), _scores(20)

    def part(start: int, stop: int) -> dict[str, torch.Tensor]:
        return {m: t[:, start:stop] for m, t in full.items()}

    for start, stop in [(0, 4), (4, 8), (12, 16)]:  # written before a range that does not continue the kept ones
        store.save_range("gaussian", "tune", PLAN, start, stop, part(start, stop))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gaussian__tune.0-8.pt"]
    monkeypatch.setattr(score_store, "CHUNK_SECONDS", 0.0)
    store.save_range("gaussian", "tune", PLAN, 16, 18, part(16, 18))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gaussian__tune.0-8.pt", "gaussian__tune.12-18.pt"]
    loaded = store.load_ranges("gaussian", "tune", PLAN, 20)
    assert list(loaded) == [(0, 8), (12, 18)] and all(torch.equal(loaded[(a, b)][m], full[m][:, a:b])
                                                      for a, b in loaded for m in full)
    assert store.reused == ["gaussian__tune.0-8.pt", "gaussian__tune.12-18.pt"]
    (tmp_path / "gaussian__tune.12-18.pt").rename(tmp_path / "gaussian__tune.12-19.pt")
    assert list(ScoreStore(tmp_path, CONTEXT, SETS, RANGES).load_ranges("gaussian", "tune", PLAN, 20)) == [(0, 8)]
    assert list(ScoreStore(tmp_path, CONTEXT, SETS, RANGES).load_ranges("gaussian", "tune", PLAN, 8)) == [(0, 8)]
    assert capsys.readouterr().out.splitlines() == [
        f"{tmp_path.name}/gaussian__tune.12-19.pt: it does not hold the scores of images 12 to 18 that its name "
        "says; scoring again",
        f"{tmp_path.name}/gaussian__tune.12-19.pt: its images 12 to 18 overlap another chunk's or lie outside the "
        "split's 8 images; scoring again"]
    store.save("gaussian", "tune", PLAN, full)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gaussian__tune.pt"]


def _problem() -> tuple[TensorDataset, dict[str, TensorDataset], ProtocolPlan, ModelScorer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5)).double().eval()
    g = torch.Generator().manual_seed(1)
    in_set = TensorDataset(torch.randn(30, 3, 2, 2, generator=g, dtype=torch.float64), torch.zeros(30))
    ood = {"ood": TensorDataset(torch.randn(24, 3, 2, 2, generator=g, dtype=torch.float64) * 2, -torch.ones(24))}
    plan = ProtocolPlan((MethodGrid.of("msp"), MethodGrid.of("odin", {"temperature": (1.0, 100.0),
                                                                      "epsilon": (0.0, 0.01)})))
    return in_set, ood, plan, ModelScorer(model, input_std=(0.5, 0.5, 0.5), batch_size=4)


def _store(folder: Path, in_set: TensorDataset, ood: dict[str, TensorDataset], reuse: str = "matching"
           ) -> ScoreStore:
    sets = {name: {"n": len(ds), "images_sha256": dataset_sha256(ds)}
            for name, ds in {"in_distribution": in_set, **ood}.items()}
    return ScoreStore(folder, {}, sets, {"msp": (0.2, 1.0), "odin": (0.2, 1.0)}, reuse=reuse)


def test_protocol_uses_loaded_scores_instead_of_scoring(tmp_path) -> None:
    in_set, ood, plan, scorer = _problem()
    first = run_protocol(plan, in_set, ood, scorer, _store(tmp_path, in_set, ood, reuse="never"))
    assert len(list(tmp_path.iterdir())) == 4
    computed = []

    def counted(dataset, scored, **options):
        computed.append(options["desc"].split(" ")[0])
        return scorer(dataset, scored, **options)

    store = _store(tmp_path, in_set, ood)
    again = run_protocol(plan, in_set, ood, counted, store)
    assert computed == [] and len(store.reused) == 4 and again.records == first.records
    (tmp_path / "ood__test.pt").unlink()
    partly = run_protocol(plan, in_set, ood, counted, _store(tmp_path, in_set, ood))
    assert computed == ["ood/test"] and partly.records == first.records
    # A store that never reuses scores everything again; one that requires saved scores fails without them.
    computed.clear()
    run_protocol(plan, in_set, ood, counted, _store(tmp_path, in_set, ood, reuse="never"))
    assert len(computed) == 4
    (tmp_path / "ood__tune.pt").unlink()
    with pytest.raises(UserError, match="ood__tune.pt: it is missing; run the protocol \\(again\\)"):
        run_protocol(plan, in_set, ood, counted, _store(tmp_path, in_set, ood, reuse="required"))

    class WrongShapes(ScoreStore):
        def load(self, *args):
            return {"msp": torch.zeros(1, 3)}

    with pytest.raises(UserError, match="the saved scores of in_distribution/tune have shapes"):
        run_protocol(plan, in_set, ood, scorer, WrongShapes(tmp_path, {}, {}))


def test_an_interrupted_pass_resumes_from_its_chunks_exactly(tmp_path, monkeypatch, capsys) -> None:
    in_set, ood, plan, scorer = _problem()
    reference = run_protocol(plan, in_set, ood, scorer)
    with monkeypatch.context() as patch:
        interrupt_scoring(patch, 3)
        with pytest.raises(RuntimeError, match="killed"):
            run_protocol(plan, in_set, ood, scorer, _store(tmp_path, in_set, ood, reuse="never"))
    # The in-distribution tuning split (15 images, batches of 4): 3 batches done, each saved as a chunk.
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"in_distribution__tune.{a}-{a + 4}.pt" for a in (0, 4, 8)]
    store = _store(tmp_path, in_set, ood)
    batches = []
    monkeypatch.setattr(protocol, "score_batch", lambda *a, **k: batches.append(len(a[1])) or score_batch(*a, **k))
    resumed = run_protocol(plan, in_set, ood, scorer, store)
    assert batches[0] == 3 and store.reused[:3] == [f"in_distribution__tune.{a}-{a + 4}.pt" for a in (0, 4, 8)]
    assert resumed.records == reference.records
    for name in ("in_distribution", "ood"):
        assert torch.equal(resumed.tuning_scores["odin"][name], reference.tuning_scores["odin"][name])
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{s}__{p}.pt" for s in ("in_distribution", "ood")
                                                          for p in ("test", "tune")]
    assert capsys.readouterr().out == ""


def _resume_process(rank: int, port: int, folder: str) -> None:
    """One of 2 gloo processes resuming the interrupted run in ``folder``; process 0 saves the tuning scores."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        in_set, ood, plan, scorer = _problem()
        store = _store(Path(folder), in_set, ood)
        result = run_protocol(plan, in_set, ood, scorer, store)
        if rank == 0:
            torch.save({"tuning": result.tuning_scores, "reused": store.reused}, Path(folder) / "result.pt.out")
    finally:
        dist.destroy_process_group()


def test_chunks_are_reused_by_a_run_with_another_number_of_processes(tmp_path, monkeypatch) -> None:
    in_set, ood, plan, scorer = _problem()
    reference = run_protocol(plan, in_set, ood, scorer)
    with monkeypatch.context() as patch:
        interrupt_scoring(patch, 2)
        with pytest.raises(RuntimeError, match="killed"):
            run_protocol(plan, in_set, ood, scorer, _store(tmp_path, in_set, ood, reuse="never"))
    torch.multiprocessing.spawn(_resume_process, args=(free_port(), str(tmp_path)), nprocs=2)
    resumed = torch.load(tmp_path / "result.pt.out")
    assert resumed["reused"][:2] == ["in_distribution__tune.0-4.pt", "in_distribution__tune.4-8.pt"]
    for method, by_set in reference.tuning_scores.items():  # 2 processes score batches of another composition
        for name, scores in by_set.items():
            torch.testing.assert_close(resumed["tuning"][method][name], scores, rtol=0, atol=1e-12)
    assert not list(tmp_path.glob("*.*-*.pt"))
