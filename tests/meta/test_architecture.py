"""The package's shape: no import cycles, third-party boundaries kept, modules a readable size.

Imports are read from the source (every `import`, at module level or inside a function, but
not under `if TYPE_CHECKING:`), so a cycle hidden in a lazy import counts too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "batcher"
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(path: Path) -> set[str]:
    """Every module this one imports (its own package's and others', top-level names)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            for alias in node.names:
                found.add(f"{node.module}.{alias.name}")  # a submodule, if it is one
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


GRAPH = {
    name: {m for m in imports(path) if m in MODULES and m != name} for name, path in MODULES.items()
}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def test_no_import_cycles():
    # the package itself is the root: `from batcher import __version__` is not a cycle
    graph = {name: {m for m in deps if m != "batcher"} for name, deps in GRAPH.items()}
    assert cycles(graph) == []


def test_the_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize(
    ("library", "allowed"),
    [
        # HTTP: the engine's boundary, the Batch API's (files, batches), and the mock server
        (
            "aiohttp",
            (
                "batcher.engine.http",
                "batcher.engine.engine",
                "batcher.batch.client",
                "batcher.mock",
            ),
        ),
        ("click", ("batcher.cli",)),
        # Ray Data's blocks are Arrow tables: batcher.ray reads and makes them.
        (
            "pyarrow",
            ("batcher.io", "batcher.analysis", "batcher.structured.columns", "batcher.ray"),
        ),
        ("ray", ("batcher.ray",)),
    ],
)
def test_third_party_libraries_stay_behind_their_boundary(library, allowed):
    users = sorted(
        name
        for name, path in MODULES.items()
        if any(m == library or m.startswith(library + ".") for m in imports(path))
    )
    outside = [u for u in users if not any(u == a or u.startswith(a + ".") for a in allowed)]
    assert outside == []


def test_modules_are_a_readable_size():
    sizes = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_importing_batcher_never_imports_ray():
    code = "import batcher, batcher.api, batcher.job, batcher.cli, sys; print('ray' in sys.modules)"
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (ran.returncode, ran.stdout) == (0, "False\n")
