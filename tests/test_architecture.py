"""The import graph of odin_pl, datamodules, callbacks and the entry points, read with ``ast`` (nothing is imported):
no import circle among modules, and no module imports a higher layer (README, "Layout"; docs/architecture.md).

Every ``import`` and ``from ... import`` counts, at module level and inside functions. An import names the module
it loads: ``from odin_pl.methods import Method`` is an edge to the package ``odin_pl.methods`` (its __init__),
``from odin_pl import models`` one to the module ``odin_pl.models``.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

ROOTS = ("odin_pl", "datamodules", "callbacks")
ENTRY_POINTS = ("evaluate", "train")
# Layer of a module by the longest matching name (low to high); a module may import its own layer and lower ones.
LAYERS = {
    **{f"odin_pl.{leaf}": 0 for leaf in ("errors", "files", "fingerprint", "distributed", "spec", "metrics",
                                         "openood_metrics", "archives", "safe_names", "csv_cells", "cli_errors",
                                         "images", "version", "progress")},
    "odin_pl.models": 1,
    "odin_pl.methods": 2,
    "odin_pl.protocol": 3,
    "odin_pl.report": 4, "odin_pl.tracking": 4, "odin_pl.training": 4,
    "odin_pl.deploy": 5, "odin_pl.analyses": 5,
    "odin_pl.evaluation": 6,
    "odin_pl": 7,
    "datamodules": 8, "callbacks": 8,
    "evaluate": 9, "train": 9,
}
# Edges into a higher layer still to be fixed, each to be removed with its fix (the test fails when one of them is
# gone, so that the list stays true); the circle check leaves them out too (detector <-> odin_pl is one).
KNOWN_UPWARD: set[tuple[str, str]] = set()


def _modules() -> dict[str, Path]:
    """Every module of the project by its dotted name (a package by its own name)."""
    found = {name: REPO / f"{name}.py" for name in ENTRY_POINTS}
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that the module ``name`` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names)
    return {_known(target, modules) for target in targets} - {None, name}


def _known(target: str, modules: dict[str, Path]) -> str | None:
    """The project module an import loads (``a.b.c`` -> the longest of ``a.b.c``, ``a.b``, ``a`` that exists)."""
    parts = target.split(".")
    return next((".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in modules), None)


def _layer(name: str) -> int:
    prefix = max((p for p in LAYERS if name == p or name.startswith(f"{p}.")), key=len)
    return LAYERS[prefix]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of the graph (its modules in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state and (found := visit(target)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_the_graph_sees_every_package_and_both_kinds_of_import(tmp_path: Path) -> None:
    graph = _graph()
    assert {"odin_pl.methods.odin", "odin_pl.protocol.run", "datamodules.ood", "callbacks.odin_eval", "evaluate",
            "train"} <= set(graph)
    assert "odin_pl.methods.registry" in graph["odin_pl.methods.odin"]  # module level
    inside = tmp_path / "inside.py"
    inside.write_text("def f():\n    from odin_pl.version import __version__\n    return __version__\n")
    assert "odin_pl.version" in _imports("odin_pl.inside", inside, _modules())  # an import inside a function
    assert "odin_pl.models" in graph["odin_pl"]  # `from odin_pl import models`: the submodule


def test_no_module_imports_a_higher_layer() -> None:
    upward = {(name, target) for name, targets in _graph().items() for target in targets
              if _layer(target) > _layer(name)}
    assert upward - KNOWN_UPWARD == set(), "imports of a higher layer"
    assert KNOWN_UPWARD - upward == set(), "fixed: remove these from KNOWN_UPWARD"


def test_there_is_no_import_circle() -> None:
    graph = {name: {t for t in targets if (name, t) not in KNOWN_UPWARD} for name, targets in _graph().items()}
    assert _circle(graph) is None


def test_a_circle_and_an_upward_import_are_found() -> None:
    """The checks on a graph that has both: a -> b -> c -> a, and the leaves importing the protocol."""
    assert _circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _circle({"a": {"b"}, "b": set()}) is None
    assert _layer("odin_pl.protocol.run") > _layer("odin_pl.metrics") and _layer("odin_pl.methods") == 2
