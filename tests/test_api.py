"""``odin_pl.evaluate``: the library call runs evaluate.py's protocol (one implementation): identical results.json on
the quickstart (its MLP with seeded weights, as in the golden test), on a checkpoint, an in-memory LightningModule,
a plain ``nn.Module`` and a test Dataset, and in a process group of 2 CPU processes."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from test_golden import COMMON, seeded_checkpoint  # noqa: F401  (the fixture)

import evaluate
import odin_pl
from conftest import free_port
from datamodules import DigitsDataModule
from datamodules.suite import build_ood_suite
from odin_pl.errors import UserError
from odin_pl.protocol.records import Record
from odin_pl.training.checkpoint import load_model, read_checkpoint

OPTIONS = {"temperatures": [1, 10, 1000], "epsilons": [0, 0.004, 0.05], "precision": "64-true",
           "accelerator": "cpu"}
OOD = ["gaussian", "uniform", "photos"]


def _ood_sets(datamodule: DigitsDataModule) -> dict:
    """The OOD sets of COMMON, built as evaluate.py builds them."""
    return build_ood_suite(OOD, (), datamodule.image_spec, datamodule.data_root, 0, 300, False, False).datasets


def _results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


@pytest.fixture(scope="module")
def command_line_run(seeded_checkpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("cli")
    evaluate.main(["protocol", "--ckpt", seeded_checkpoint, "--output.dir", str(out), *COMMON])
    return out


def test_a_checkpoint_gives_the_results_json_of_evaluate_py(seeded_checkpoint: str, command_line_run: Path,  # noqa: F811
                                                            tmp_path: Path) -> None:
    evaluation = odin_pl.evaluate(seeded_checkpoint, None, _ood_sets(DigitsDataModule()), **OPTIONS)
    files = evaluation.save(tmp_path)
    assert _results(tmp_path) == _results(command_line_run)
    assert (tmp_path / "table.md").read_text() == (command_line_run / "table.md").read_text() \
        == evaluation.table() + "\n" * ((command_line_run / "table.md").read_text().endswith("\n"))
    assert sorted(p.name for p in files.detectors) == sorted(p.name for p in (command_line_run / "detectors").iterdir())
    assert all(isinstance(r, Record) for r in evaluation.records) and len(evaluation.records) == 2 * len(OOD)
    assert json.loads(json.dumps([r.to_dict() for r in evaluation.records])) == _results(command_line_run)["records"]


@pytest.mark.parametrize("which", ["lightning_module", "plain_module_and_dataset"])
def test_an_in_memory_model_gives_the_same_records(seeded_checkpoint: str, command_line_run: Path,  # noqa: F811
                                                   which: str, tmp_path: Path) -> None:
    """The checkpoint's ImageClassifier with its DataModule, or its bare network (nn.Sequential-free timm MLP) with
    the test Dataset and the spec from the argument: the same records; the weights are saved in the run folder."""
    model = load_model(read_checkpoint(seeded_checkpoint))
    datamodule = DigitsDataModule()
    ood = _ood_sets(datamodule)
    if which == "lightning_module":
        evaluation = odin_pl.evaluate(model, datamodule, ood, output_dir=tmp_path, **OPTIONS)
    else:
        datamodule.setup("test")
        evaluation = odin_pl.evaluate(model.net.eval(), datamodule.test_set, ood, spec=datamodule.image_spec,
                                      output_dir=tmp_path, **OPTIONS)
    evaluation.save(tmp_path)
    expected, actual = _results(command_line_run), _results(tmp_path)
    assert actual["records"] == expected["records"] and actual["selections"] == expected["selections"]
    assert actual["checkpoint"] == str(tmp_path / "weights.pt") and (tmp_path / "weights.pt").is_file()


def test_bad_calls_fail_in_one_line(seeded_checkpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    ood = _ood_sets(DigitsDataModule())
    with pytest.raises(UserError, match="no option temprature"):
        odin_pl.evaluate(seeded_checkpoint, None, ood, temprature=2)
    with pytest.raises(UserError, match="protocol must be one of"):
        odin_pl.evaluate(seeded_checkpoint, None, ood, protocol="papers")
    with pytest.raises(UserError, match="ood must map OOD set names to Datasets"):
        odin_pl.evaluate(seeded_checkpoint, None, ["gaussian"])
    with pytest.raises(UserError, match="image spec is unknown"):
        odin_pl.evaluate(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval(),
                         DigitsDataModule().load_split(train=False, augment=False), ood, **OPTIONS)
    evaluation = odin_pl.evaluate(seeded_checkpoint, None, ood, methods="msp", **OPTIONS)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(UserError, match=r"pip install 'odin-pl\[pandas\]'"):
        evaluation.to_pandas()


def test_to_pandas_has_a_row_per_record(seeded_checkpoint: str) -> None:  # noqa: F811
    pandas = pytest.importorskip("pandas")
    evaluation = odin_pl.evaluate(seeded_checkpoint, None, _ood_sets(DigitsDataModule()), **OPTIONS)
    frame = evaluation.to_pandas()
    assert isinstance(frame, pandas.DataFrame) and len(frame) == len(evaluation.records)
    assert frame["auroc"].tolist() == [r.metrics["auroc"] for r in evaluation.records]


def _group_process(rank: int, port: int, ckpt: str, out: str) -> None:
    """One of 2 processes in a process group that the caller set up; process 0 saves the records."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        evaluation = odin_pl.evaluate(ckpt, None, _ood_sets(DigitsDataModule()), **OPTIONS)
        if rank == 0:
            Path(out, "records.json").write_text(json.dumps([r.to_dict() for r in evaluation.records]))
    finally:
        torch.distributed.destroy_process_group()


def test_in_a_process_group_each_process_scores_its_shard(seeded_checkpoint: str, command_line_run: Path,  # noqa: F811
                                                         tmp_path: Path) -> None:
    torch.multiprocessing.spawn(_group_process, args=(free_port(), seeded_checkpoint, str(tmp_path)), nprocs=2)
    records = json.loads((tmp_path / "records.json").read_text())
    assert records == _results(command_line_run)["records"]
