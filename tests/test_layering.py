"""The package's layering: no import cycle between modules, ``data/`` below ``models/``, and the
core (node, system, store, study, stats) free of the edges (tasks, report)."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PKG = Path(__file__).resolve().parent.parent / "entangle"


def _module(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(lazy: bool) -> nx.DiGraph:
    """Edges module -> entangle module it imports (at module level; with ``lazy`` also inside
    functions). Importing ``a.b`` counts as importing ``a.b`` only (packages' __init__ are tiny)."""
    modules = {_module(p): p for p in PKG.rglob("*.py")}
    g = nx.DiGraph()
    for name, path in modules.items():
        g.add_node(name)
        tree = ast.parse(path.read_text())
        nodes = ast.walk(tree) if lazy else tree.body
        for node in nodes:
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                base = node.module if not node.level else ".".join(
                    name.split(".")[:len(name.split(".")) - node.level + (path.name == "__init__.py")]
                    + [node.module])
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                if t in modules and t != name:
                    g.add_edge(name, t)
    return g


def test_no_import_cycle_at_module_level():
    g = import_graph(lazy=False)
    cycles = list(nx.simple_cycles(g))
    assert not cycles, f"module-level import cycles: {cycles[:5]}"


def test_data_does_not_import_models_and_the_core_does_not_import_the_edges():
    g = import_graph(lazy=True)
    bad = [(a, b) for a, b in g.edges if a.startswith("entangle.data.") and b.startswith("entangle.models.")]
    assert not bad, f"data/ imports models/: {bad}"
    core = ("entangle.node", "entangle.system", "entangle.store", "entangle.hashing", "entangle.executor",
            "entangle.stats", "entangle.study", "entangle.compare", "entangle.decompose")
    edges = [(a, b) for a, b in g.edges if a in core and b.startswith(("entangle.tasks", "entangle.report",
                                                                        "entangle.cli"))]
    assert not edges, f"the core imports the edges: {edges}"


def test_compare_and_decompose_form_no_cycle_even_lazily():
    g = import_graph(lazy=True)
    assert not (g.has_edge("entangle.decompose", "entangle.compare")
                and nx.has_path(g, "entangle.compare", "entangle.decompose"))
