"""docs/reliability.md against the tests: every case names a test, and every test it names exists."""

from __future__ import annotations

import re

from conftest import REPO

DOC = REPO / "docs" / "reliability.md"
REFERENCE = re.compile(r"`((?:[\w/]+/)?\w+\.py)(?:::(\w+))?`")


def _target(file: str):
    return REPO / "tests" / file if file.startswith("test_") else REPO / file


def test_every_case_names_tests_that_exist() -> None:
    rows = [line for line in DOC.read_text().splitlines() if line.startswith("| ") and not line.startswith("| input")
            and not line.startswith("| fault") and not line.startswith("| mode")]
    cases = [row for row in rows if row.count("|") >= 4]  # input | what happens | test (the decoding table has 2)
    assert len(cases) >= 30
    for row in cases:
        last = row.rstrip(" |").rsplit("|", 1)[1].strip()
        assert last == "same" or REFERENCE.search(last), f"a case without a test: {row}"
    references = REFERENCE.findall(DOC.read_text())
    assert references
    for file, name in references:
        if not (file.startswith("test_") or file.startswith("odin_pl/")):
            continue  # a module named in the prose (evaluate.py ...)
        path = _target(file)
        assert path.is_file(), f"{file} does not exist"
        if name:
            assert re.search(rf"^\s*def {name}\(", path.read_text(), re.M), f"{file}::{name} does not exist"
