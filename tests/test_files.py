"""odin_pl.files: atomic writes keep the old file and leave no temporary file when writing fails."""

from __future__ import annotations

import csv
import errno
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from odin_pl.report import tables as report
from odin_pl.errors import OutputError, UserError
from odin_pl.csv_cells import safe_cell
from odin_pl import files
from odin_pl.evaluation.outputs import remove_stale, write_config
from odin_pl.files import atomic_write
from odin_pl.protocol.records import Record


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_atomic_write_replaces_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "new" / "folder" / "a.txt"
    with atomic_write(path) as handle:
        handle.write("first")
        assert not path.exists()  # nothing at the target until the block ends
    assert path.read_text() == "first" and sorted(p.name for p in path.parent.iterdir()) == ["a.txt"]


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "the disk is full"), (errno.EACCES, "permission denied"),
                                         (errno.EROFS, "the file system is read-only")])
def test_a_failed_write_keeps_the_old_file_and_says_why(tmp_path: Path, code: int, words: str) -> None:
    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(OutputError, match=f"cannot write {re.escape(str(path))}: {words}.*--output.dir") as caught:
        with atomic_write(path) as handle:
            handle.write("half")
            raise OSError(code, "injected")
    assert isinstance(caught.value, UserError) and isinstance(caught.value, OSError)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_other_errors_pass_through_and_leave_nothing(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        with atomic_write(tmp_path / "b.txt") as handle:
            handle.write("x")
            raise KeyError("a bug keeps its type")
    assert list(tmp_path.iterdir()) == []


def test_results_survive_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """write_results over an earlier run's files: a disk that fills while results.csv is written leaves
    results.json complete (new), results.csv and table.md as they were, and no hidden temporary file."""
    records = [Record("gaussian", "msp", (), {}, {"auroc": 0.9}, n_in=10, n_out=10)]
    report.write_results(tmp_path, records, {"seed": 0}, "old table")
    before = (tmp_path / "results.csv").read_text()
    monkeypatch.setattr(report.csv, "DictWriter", _disk_full)
    with pytest.raises(OutputError, match="results.csv: the disk is full"):
        report.write_results(tmp_path, [replace(records[0], metrics={"auroc": 0.5})], {"seed": 0}, "new table")
    assert json.loads((tmp_path / "results.json").read_text())["records"][0]["auroc"] == 0.5
    assert (tmp_path / "results.csv").read_text() == before and (tmp_path / "table.md").read_text() == "old table\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "results.json", "table.md"]


def test_csv_cells_are_never_formulas_and_json_keeps_the_exact_names(tmp_path: Path) -> None:
    """OWASP's rule on every text cell of results.csv (before issue 29 an OOD folder named ``=1+1`` put a formula
    into it); numbers, negative ones included, stay numbers; results.json keeps the exact names."""
    names = ["=1+1", "+SUM(1,2)", "-2", "@cmd", "\tx", "\rx", "plain", "a=b", "\udce9t\udce9"]
    records = [Record(name, "msp", (), {}, {"auroc": -0.25}, n_in=10, n_out=10) for name in names]
    report.write_results(tmp_path, records, {"seed": 0}, "table")
    with open(tmp_path / "results.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["ood"] for row in rows] == ["'=1+1", "'+SUM(1,2)", "'-2", "'@cmd", "'\tx", "'\rx", "plain", "a=b",
                                            "\\xe9t\\xe9"]
    assert {row["auroc"] for row in rows} == {"-0.25"}
    assert [r["ood"] for r in json.loads((tmp_path / "results.json").read_text())["records"]] == names
    assert [safe_cell(v) for v in (-1.5, 3, None, True)] == [-1.5, 3, None, True]


def test_config_yaml_is_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before issue 29 evaluate.py wrote config.yaml with ``write_text``: a full disk left it empty."""
    assert write_config(tmp_path, "seed: 1\n").read_text() == "seed: 1\n"
    monkeypatch.setattr(files.os, "fsync", _disk_full)
    with pytest.raises(OutputError, match="config.yaml: the disk is full"):
        write_config(tmp_path, "seed: 2\n")
    assert (tmp_path / "config.yaml").read_text() == "seed: 1\n" and len(list(tmp_path.iterdir())) == 1


def test_stale_files_of_an_earlier_run_are_removed(tmp_path: Path) -> None:
    """Before issue 29 a reused output folder kept another run's ``detectors/uniform.json`` and uniform figures
    beside the new run's results."""
    for name in ("gaussian.json", "uniform.json", "uniform.knn.json", ".hidden.json", "notes.txt"):
        (tmp_path / name).write_text("{}")
    removed = remove_stale(tmp_path, [tmp_path / "gaussian.json"], "*.json")
    assert [p.name for p in removed] == ["uniform.json", "uniform.knn.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden.json", "gaussian.json", "notes.txt"]
    assert remove_stale(tmp_path / "absent", [], "*.png") == []
