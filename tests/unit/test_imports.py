"""Imports run one way: no module of the repository imports one that imports it back.

Read from the source (AST), not by importing: every ``import`` counts, at the top of a module
or inside a function (an import inside a function only hides a loop until that function
runs), and so does one under ``if TYPE_CHECKING``.  Each package is checked on its own, so the
test names the package whose modules form a cycle, and the cycle itself, module by module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api import REPO


def packages() -> list[str]:
    """Every top-level package of the repository (a folder with an ``__init__.py``)."""
    return sorted(
        p.parent.name for p in REPO.glob("*/__init__.py") if not p.parent.name.startswith(".")
    )


def module_files() -> dict[str, Path]:
    """Module name -> file, for every module of every package (``pkg.__init__`` as ``pkg``)."""
    found: dict[str, Path] = {}
    for package in packages():
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imported(node: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """The names an import statement brings in, resolved to absolute dotted names."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            here = module.split(".") if is_package else module.split(".")[:-1]
            base = here[: len(here) - (node.level - 1)]
            prefix = ".".join([*base, node.module] if node.module else base)
        else:
            prefix = node.module or ""
        for alias in node.names:
            yield f"{prefix}.{alias.name}"
        yield prefix


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The repository's modules that ``module`` imports, anywhere in its source."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    targets: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        names = list(_imported(node, module, is_package))
        if not names:
            continue
        # ``from pkg import name``: the module pkg.name where there is one, else pkg itself.
        modules = [n for n in names if n in known]
        specific = [n for n in modules if not any(o.startswith(n + ".") for o in modules)]
        targets.update(specific)
    targets.discard(module)
    return targets


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {module: imports_of(module, path, known) for module, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of modules (Tarjan's algorithm): the
    shortest through the group's first module; the group may hold more modules than it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(group, graph) for group in groups]


def _cycle_in(group: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the group's first module, staying inside the group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & group):
                if nxt == start:
                    return [*paths[node], start]
                if nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle in the group {sorted(group)}")


def test_the_reader_finds_a_cycle_hidden_in_a_function(tmp_path: Path) -> None:
    """The checker itself: an import inside a function closes a loop just as one at the top."""
    (tmp_path / "a.py").write_text("import pkg.b\n")
    (tmp_path / "b.py").write_text("def f():\n    from pkg import a\n")
    (tmp_path / "c.py").write_text("from . import b\nfrom .a import thing\n")
    known = {"pkg", "pkg.a", "pkg.b", "pkg.c"}
    graph = {
        f"pkg.{name}": imports_of(f"pkg.{name}", tmp_path / f"{name}.py", known) for name in "abc"
    }
    assert graph == {"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": {"pkg.a", "pkg.b"}}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"]]


@pytest.mark.parametrize("package", packages())
def test_no_module_imports_one_that_imports_it_back(package: str) -> None:
    graph = import_graph()
    found = [
        " -> ".join(cycle)
        for cycle in cycles(graph)
        if any(m == package or m.startswith(package + ".") for m in cycle)
    ]
    assert not found, "import cycles (one per group of modules that import each other):\n" + (
        "\n".join(found)
    )
