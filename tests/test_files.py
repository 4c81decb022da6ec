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


@pytest.mark.parametrize("name", ["", ".", "..", "../escape.pt", "sub/dir.pt", "nul\0.pt", "x" * 241])
def test_an_output_file_name_made_from_a_name_is_one_plain_short_component(tmp_path: Path, name: str) -> None:
    """Before: fit files, score files, figures and detector files were ``folder / f"{name}..."`` with no check, so
    a method or set name with a separator wrote outside the run folder, and a long one failed after the work."""
    with pytest.raises(UserError, match="output file name"):
        files.named_file(tmp_path, name)
    assert files.named_file(tmp_path, "tin_crop__test.pt") == tmp_path / "tin_crop__test.pt"
    assert files.named_file(tmp_path, "é" * 120) == tmp_path / ("é" * 120)  # 240 bytes in UTF-8


def test_a_fitted_method_whose_name_is_no_file_name_is_refused_before_any_pass(tmp_path: Path) -> None:
    from feature_nets import tiny_net

    from odin_pl.methods import create_method
    from odin_pl.protocol.fits import prepare_fits
    from odin_pl.protocol.plan import MethodGrid

    method = create_method("she")
    method.name = "../she"  # a third-party method registered under a name with a separator
    grid = MethodGrid(method, ((),))
    with pytest.raises(UserError, match="not a plain file name"):
        prepare_fits(tiny_net(), [grid], None, folder=tmp_path / "fits", weights_sha256="0" * 64)
    assert not any(tmp_path.iterdir())


def test_aggregate_writes_its_files_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: aggregate.json and aggregate.md were written with ``Path.write_text``, so a full disk left them
    truncated."""
    from odin_pl.evaluation import aggregate

    runs = [tmp_path / "run0", tmp_path / "run1"]
    for run in runs:
        run.mkdir()
        (run / "results.json").write_text("{}")
    monkeypatch.setattr(aggregate, "aggregate_results", lambda results, dirs: {"rows": [], "n_runs": len(dirs)})
    monkeypatch.setattr(aggregate, "aggregate_table", lambda agg: "| table |")
    out = tmp_path / "agg"
    out.mkdir()
    (out / "aggregate.json").write_text("old")
    monkeypatch.setattr(files.os, "fsync", _disk_full)
    with pytest.raises(OutputError, match="the disk is full"):
        aggregate.aggregate_runs(runs, out)
    assert sorted(p.name for p in out.iterdir()) == ["aggregate.json"] and (out / "aggregate.json").read_text() == "old"
