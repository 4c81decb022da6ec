"""Every ```python block of README.md and docs/*.md runs: a file's blocks in order, in one fresh interpreter (as in
a notebook: a block may use what an earlier one made), in a temporary folder, offline on the CPU.

A block that needs what a test cannot have (a trained run, a downloaded data set) starts with the line
``# doc-test: skip (why)``: it is only compiled, so that its syntax still counts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

SKIP = "# doc-test: skip"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def python_blocks(text: str) -> list[str]:
    return BLOCK.findall(text)


def test_the_blocks_are_found_and_skips_need_a_reason() -> None:
    blocks = python_blocks("a\n```python\nx = 1\n```\n```bash\nls\n```\n```python\n# doc-test: skip (data)\ny\n```\n")
    assert blocks == ["x = 1\n", "# doc-test: skip (data)\ny\n"]
    for document in DOCUMENTS:
        for block in python_blocks(document.read_text()):
            if block.startswith(SKIP):
                assert re.match(r"# doc-test: skip \(.+\)\n", block), f"{document.name}: a skip says why: {block!r}"


@pytest.mark.parametrize("document", [d for d in DOCUMENTS if python_blocks(d.read_text())],
                         ids=lambda d: d.relative_to(REPO).as_posix())
def test_the_python_blocks_run(document: Path, tmp_path: Path) -> None:
    blocks = python_blocks(document.read_text())
    for i, block in enumerate(blocks):
        compile(block, f"{document.name} block {i + 1}", "exec")
    runnable = [block for block in blocks if not block.startswith(SKIP)]
    script = tmp_path / "blocks.py"
    script.write_text("\n\n".join(runnable))
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"{document.name}:\n{done.stderr[-3000:]}"
