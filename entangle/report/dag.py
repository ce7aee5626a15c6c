"""Drawing a system as a graph: layers by topological generation, left to right."""

from __future__ import annotations

from typing import Mapping

import matplotlib
import networkx as nx

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

#: colours of verdicts (improved / worse / noise / self-defeating) and of nodes without one.
VERDICT_COLORS = {"improved": "#2e7d32", "worse": "#c62828", "noise": "#9e9e9e",
                  "self-defeating": "#6a1b9a", "changed": "#1565c0", None: "#eceff1"}


def layered_positions(graph: nx.DiGraph) -> dict[str, tuple[float, float]]:
    """Positions with one column per topological generation (readable from 3 to ~50 nodes)."""
    for layer, nodes in enumerate(nx.topological_generations(graph)):
        for n in nodes:
            graph.nodes[n]["_layer"] = layer
    pos = nx.multipartite_layout(graph, subset_key="_layer", align="vertical")
    for n in graph.nodes:
        graph.nodes[n].pop("_layer", None)
    return {n: (float(x), float(y)) for n, (x, y) in pos.items()}


def draw_system(graph: nx.DiGraph, status: Mapping[str, str | None] | None = None, ax=None,
                title: str | None = None):
    """Draw ``graph`` with nodes coloured by ``status`` (a verdict per node); returns the figure."""
    status = dict(status or {})
    g = graph.copy()
    n = g.number_of_nodes()
    if ax is None:
        layers = max(1, len(list(nx.topological_generations(g))))
        fig, ax = plt.subplots(figsize=(min(16, 2.2 + 2.2 * layers), min(12, 1.5 + 0.55 * n)))
    else:
        fig = ax.figure
    pos = layered_positions(g)
    colors = [VERDICT_COLORS.get(status.get(v), VERDICT_COLORS[None]) for v in g.nodes]
    size = 2600 if n <= 12 else max(500, 2600 * 12 // n)
    nx.draw_networkx_edges(g, pos, ax=ax, arrows=True, arrowsize=14, node_size=size,
                           edge_color="#607d8b")
    nx.draw_networkx_nodes(g, pos, ax=ax, node_color=colors, node_size=size,
                           edgecolors="#37474f")
    dark = {"improved", "worse", "self-defeating", "changed"}
    labels = {v: v for v in g.nodes}
    for v in g.nodes:
        nx.draw_networkx_labels(g, pos, labels={v: labels[v]}, ax=ax, font_size=9 if n <= 20 else 7,
                                font_color="white" if status.get(v) in dark else "black")
    used = sorted({s for s in status.values() if s}, key=str)
    for s in used:
        ax.scatter([], [], c=VERDICT_COLORS[s], s=80, label=s, edgecolors="#37474f")
    if used:
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, -0.12), ncol=len(used), frameon=False)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    ax.margins(0.15)
    return fig
