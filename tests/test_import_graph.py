"""The import graph of the project's packages: no cycle, and ``figsearch`` below the others.

Only module-level imports count (those run when a module is imported); an import inside a
function is lazy and is how the CLI reaches ``indexer`` / ``trainer`` / ``ui`` on demand, and
imports under ``if TYPE_CHECKING:`` never run. A cycle makes the import order decide which
module sees a half-initialised other (the ``indexer.ingest`` <-> ``indexer.pmc_cloud`` circle
was one); ``figsearch`` importing a layer above it would drag the indexer and trainer into
the API's start-up.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("figsearch", "indexer", "trainer", "ui")
UPPER_LAYERS = ("indexer", "trainer", "ui")


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """``{dotted module name: file}`` of every module of the project's packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _eager_imports(tree: ast.AST, lazy: bool = False) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run at import time: not in a function, not under ``TYPE_CHECKING``
    (with ``lazy``, those in functions too)."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack = list(ast.iter_child_nodes(tree))
    while stack:
        node = stack.pop()
        if not lazy and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return found


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool,
             modules: dict[str, Path]) -> set[str]:
    """The project modules an import statement loads (the most specific one per name)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        names = [f"{base}.{alias.name}" for alias in node.names]
    out = set()
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name != module:
            out.add(name)
    return out


Graph = dict[str, set[str]]


def import_graph(root: Path = ROOT, lazy: bool = False) -> Graph:
    """``{module: modules it imports at module level}`` (an edge a -> b: importing a imports b);
    with ``lazy``, imports inside functions count too."""
    modules = module_files(root)
    graph: Graph = {module: set() for module in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in _eager_imports(tree, lazy):
            graph[module] |= _targets(node, module, path.name == "__init__.py", modules)
    return graph


def edges(graph: Graph) -> set[tuple[str, str]]:
    """Every ``(importer, imported)`` pair."""
    return {(a, b) for a, targets in graph.items() for b in targets}


def cycles(graph: Graph) -> list[list[str]]:
    """The import cycles, as the sorted modules of each strongly connected component that
    holds more than one module (Tarjan's algorithm; a module cannot import itself here)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

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
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def reachable(graph: Graph, start: str) -> set[str]:
    """Every module that importing ``start`` imports, directly or not."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_graph_sees_the_packages_and_their_imports():
    graph = import_graph()
    assert {"figsearch.store", "indexer.ingest", "indexer.workers", "trainer.evaluate",
            "ui.app"} <= set(graph)
    # edges the code really has: a wrong parser (no edges) would pass the checks below
    assert {("indexer.ingest", "indexer.workers"), ("indexer.pmc_cloud", "indexer.workers"),
            ("indexer.workers", "figsearch.store")} <= edges(graph)
    print(f"import graph: {len(graph)} modules, {len(edges(graph))} module-level edges")


def test_no_import_cycle():
    found = cycles(import_graph())
    assert found == [], f"module-level import cycles: {found}"


def test_sources_do_not_import_each_other():
    """Both sources use the shared worker pool; the cloud source needs nothing of ``ingest``,
    not even lazily (``ingest`` reaches the cloud source, in functions, to route to it)."""
    assert "indexer.ingest" not in reachable(import_graph(lazy=True), "indexer.pmc_cloud")
    graph = import_graph()
    for source in ("indexer.ingest", "indexer.pmc_cloud"):
        assert "indexer.workers" in graph[source]
        assert {"indexer.ingest", "indexer.pmc_cloud"} & reachable(graph, source) == set()
    below = {n for n in reachable(graph, "indexer.workers") if n.startswith("indexer.")}
    assert below <= {"indexer.jats", "indexer.readers", "indexer.sources"}, below


def test_figsearch_does_not_import_the_layers_above_it():
    graph = import_graph()
    upward = sorted((a, b) for a, b in edges(graph)
                    if a.split(".")[0] == "figsearch" and b.split(".")[0] in UPPER_LAYERS)
    assert upward == [], f"figsearch imports indexer/trainer/ui at module level: {upward}"


def test_a_lazy_import_is_not_an_edge(tmp_path):
    """The rule the checks rely on: imports in functions and under TYPE_CHECKING are lazy."""
    (tmp_path / "figsearch").mkdir()
    for package in UPPER_LAYERS:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "figsearch" / "__init__.py").write_text("")
    (tmp_path / "figsearch" / "a.py").write_text(
        "from typing import TYPE_CHECKING\nfrom . import b\n"
        "if TYPE_CHECKING:\n    import indexer\n"
        "def f():\n    import trainer\n")
    (tmp_path / "figsearch" / "b.py").write_text("try:\n    import ui\nexcept ImportError:\n"
                                                 "    pass\nfrom figsearch.a import f\n")
    graph = import_graph(tmp_path)
    assert edges(graph) == {("figsearch.a", "figsearch.b"), ("figsearch.b", "ui"),
                            ("figsearch.b", "figsearch.a")}
    assert cycles(graph) == [["figsearch.a", "figsearch.b"]]
