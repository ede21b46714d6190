"""The package's layers: no import cycles between modules, and no layer imports one above it.

Read from the source (``ast``), counting imports inside functions too: a function-local import
that only dodges a cycle at run time is still a cycle in the design. The root package
``kdcache/__init__.py`` counts as a unit of its own (``kdcache``), the front door above the API:
its lazy re-exports (the module names in its ``_EXPORTS`` table) count as imports, and a module
that imports from it (``from kdcache import __version__``) points up at it. The layers are
described in docs/design.md §Layers.
"""

from __future__ import annotations

import ast
import functools
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kdcache"

# Bottom to top: a unit imports units of lower layers only (and, within its own layer, the pairs
# in SAME_LAYER). A unit is a subpackage (kdcache/data) or a top-level module (kdcache/views.py).
LAYERS: list[set[str]] = [
    {"errors", "_version"},
    {"seeding", "runtime", "cache"},
    {"data", "losses"},
    {"augment", "models", "extract_writer"},
    {"views", "summary", "extract_config"},
    {"extract", "verify"},
    {"stream"},
    {"training"},
    {"api", "demo"},
    {"kdcache"},  # the root package: the front door's lazy re-exports
    {"cli"},
    {"__main__"},
]
ROOT = "kdcache"
SAME_LAYER: set[tuple[str, str]] = set()
# Narrower than the layers: a unit named here imports only the units listed (the losses are pure
# functions of tensors, so they stay usable without a cache); and pairs that the layer order would
# allow but the design does not (training and the stream read caches, they never write one).
ONLY_IMPORTS: dict[str, set[str]] = {"errors": set(), "_version": set(), "losses": {"errors"}}
NEVER: set[tuple[str, str]] = {("training", "extract"), ("stream", "extract")}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _lazy_exports(tree: ast.Module) -> list[str]:
    """The modules named in a module-level ``_EXPORTS = {name: "module", ...}`` table."""
    return [
        value.value
        for node in tree.body
        if isinstance(node, ast.AnnAssign | ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in _targets(node))
        and isinstance(node.value, ast.Dict)
        for value in node.value.values
        if isinstance(value, ast.Constant) and isinstance(value.value, str)
    ]


def _targets(node: ast.AnnAssign | ast.Assign) -> list[ast.expr]:
    return [node.target] if isinstance(node, ast.AnnAssign) else node.targets


@functools.cache
def _import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        targets: list[str] = _lazy_exports(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.append(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                targets.extend(alias.name for alias in node.names)
        for target in targets:
            if target in modules and target != name:
                graph[name].add(target)
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
    return ROOT if module == ROOT else module.split(".")[1]


def _arrows_up(graph: dict[str, set[str]], layer: int) -> list[str]:
    """Imports by modules of ``layer`` of a unit above it (or beside it, outside SAME_LAYER)."""
    level = {unit: n for n, units in enumerate(LAYERS) for unit in units}
    return sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        if level[_unit(module)] == layer
        for target in targets
        if _unit(target) != _unit(module)
        and (
            level[_unit(target)] > layer
            or (level[_unit(target)] == layer and (_unit(module), _unit(target)) not in SAME_LAYER)
        )
    )


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
    assert _arrows_up(_import_graph(), layer) == []


def _narrower_rules(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        for target in targets
        if _unit(target) != _unit(module)
        and (
            (_unit(module), _unit(target)) in NEVER
            or _unit(target) not in ONLY_IMPORTS.get(_unit(module), {_unit(target)})
        )
    )


def test_the_narrower_rules_hold() -> None:
    assert _narrower_rules(_import_graph()) == []


def test_the_narrower_rules_find_what_they_forbid() -> None:
    graph = {
        "kdcache.losses.sparse": {"kdcache.cache.sparse", "kdcache.errors", "kdcache.losses.kd"},
        "kdcache.training.x": {"kdcache.extract", "kdcache.cache.reader"},
    }
    assert _narrower_rules(graph) == [
        "kdcache.losses.sparse imports kdcache.cache.sparse",
        "kdcache.training.x imports kdcache.extract",
    ]


def test_the_root_package_is_counted() -> None:
    graph = _import_graph()
    assert "kdcache.api" in graph.get(ROOT, set())  # its lazy export of open_cache


def test_an_import_of_the_root_from_below_is_an_arrow_up() -> None:
    runtime = LAYERS.index({"seeding", "runtime", "cache"})
    graph = {"kdcache.runtime": {ROOT}, ROOT: {"kdcache.api"}}
    assert _arrows_up(graph, runtime) == ["kdcache.runtime imports kdcache"]
    assert _arrows_up({"kdcache.cli.main": {ROOT}}, LAYERS.index({"cli"})) == []
