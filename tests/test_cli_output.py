"""Output a person reads: evaluate.py's help (fast, plain text) and progress lines without a terminal."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

import evaluate
from odin_pl.progress import with_progress

ROOT = Path(__file__).resolve().parents[1]


def test_overview_help_imports_no_library() -> None:
    """``evaluate.py --help`` lists the subcommands without importing torch, Lightning or the library (it took 8 s
    with them), and shows no "(required)" for the subcommand that defaults to protocol."""
    code = ("import sys, evaluate\nsys.argv = ['evaluate.py', '--help']\ntry:\n    evaluate.main()\n"
            "except SystemExit:\n    pass\n"
            "print('HEAVY', sorted(m for m in ('torch', 'lightning', 'odin_pl') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    assert "protocol" in out and "aggregate" in out and "(required)" not in out


@pytest.mark.parametrize("command", ["protocol", "predict", "analyses", "bootstrap", "aggregate"])
def test_subcommand_help_is_plain_text(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--" in text
    # no reST markup, no internal references, no "(required)", no float repr such as 0.0006000000000000001
    for markup in ("``", ":class:", ":func:", "DESIGN", "odin_pl.", "(required)\n", "00000000"):
        assert markup not in text, (command, markup)


def _lines(items: list[int], quiet_seconds: float, monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], list[str]]:
    stderr = io.StringIO()  # not a terminal
    monkeypatch.setattr(sys, "stderr", stderr)
    seen = list(with_progress(items, "scoring cifar10", quiet_seconds=quiet_seconds))
    return seen, stderr.getvalue().splitlines()


def test_progress_without_a_terminal_is_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """No carriage returns: a line at each 10% when one is due (here always: quiet_seconds 0) and one at the end."""
    seen, lines = _lines(list(range(25)), 0.0, monkeypatch)
    assert seen == list(range(25))
    assert [line.split(": ")[1].split(" ")[0] for line in lines[:-1]] == [f"{p}%" for p in range(10, 100, 10)]
    assert lines[0].startswith("scoring cifar10: 10% (3/25 batches")
    assert lines[-1].startswith("scoring cifar10: done (25 batches")
    assert not any("\r" in line for line in lines)


def test_progress_of_a_fast_pass_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    seen, lines = _lines(list(range(1000)), 3600.0, monkeypatch)
    assert len(seen) == 1000 and len(lines) == 1 and lines[0].startswith("scoring cifar10: done (1000 batches")


def test_progress_off_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert list(with_progress(iter(range(3)), None)) == [0, 1, 2]
    assert list(with_progress(range(3), "x", enabled=False)) == [0, 1, 2]
    assert capsys.readouterr().err == ""
