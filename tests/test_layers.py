"""The package's layers: no import cycles between modules, and no layer imports one above it.

Read from the source (``ast``), counting imports inside functions too: a function-local import
that only dodges a cycle at run time is still a cycle in the design. The root package
``kdcache/__init__.py`` is left out: it re-exports the public names lazily (``__getattr__``).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kdcache"

# Bottom to top: a unit imports units of lower layers only (and, within its own layer, the pairs
# in SAME_LAYER). A unit is a subpackage (kdcache/data) or a top-level module (kdcache/views.py).
LAYERS: list[set[str]] = [
    {"errors"},
    {"seeding", "runtime", "cache"},
    {"data", "losses"},
    {"augment", "models", "extract_writer"},
    {"views", "summary"},
    {"stream"},
    {"extract", "verify"},
    {"training"},
    {"api", "demo"},
    {"cli"},
    {"__main__"},
]
SAME_LAYER: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.append(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            for target in targets:
                if target in modules and target not in (name, "kdcache"):
                    graph[name].add(target)
    graph.pop("kdcache", None)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in list(graph):
        if node not in index:
            visit(node)
    return found


def _unit(module: str) -> str:
    return module.split(".")[1]


def test_no_import_cycles() -> None:
    assert _cycles(_import_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_unit_has_a_layer() -> None:
    units = {_unit(m) for m in _import_graph()} | {
        _unit(t) for targets in _import_graph().values() for t in targets
    }
    placed = set().union(*LAYERS)
    assert units <= placed, f"place {sorted(units - placed)} in LAYERS"


@pytest.mark.parametrize("layer", range(len(LAYERS)))
def test_no_layer_imports_one_above_it(layer: int) -> None:
    level = {unit: n for n, units in enumerate(LAYERS) for unit in units}
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in _import_graph().items()
        if level[_unit(module)] == layer
        for target in targets
        if _unit(target) != _unit(module)
        and (
            level[_unit(target)] > layer
            or (level[_unit(target)] == layer and (_unit(module), _unit(target)) not in SAME_LAYER)
        )
    )
    assert wrong == []
