"""Drawing a system as a graph: one layer per topological generation, nodes coloured by verdict.

Layers run left to right for shallow systems and top to bottom for deep ones, so that a
3-node toy and a 50-node pipeline both stay readable. Within a layer, nodes are ordered by the
barycentre of their neighbours (a few sweeps of the Sugiyama heuristic) to reduce crossings.
Edges that only carry ground truth (``targets``) are drawn dashed and light, so the data flow
between models stands out.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import matplotlib
import networkx as nx

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from entangle.report.colors import DARK, LEGEND_ORDER, VERDICT_COLORS  # noqa: E402,F401


_EDGE = "#546e7a"
_TARGET_EDGE = "#b0bec5"


def layer_of(graph: nx.DiGraph) -> dict[Any, int]:
    """Each node's topological generation (sources are 0; a node sits right after its last input)."""
    return {n: i for i, layer in enumerate(nx.topological_generations(graph)) for n in layer}


def _order_layers(graph: nx.DiGraph, layers: list[list[Any]], sweeps: int) -> list[list[Any]]:
    """Reorder each layer by the mean rank of its neighbours in the layers already placed."""
    layers = [list(layer) for layer in layers]

    def coords() -> dict[Any, float]:
        return {n: i - (len(layer) - 1) / 2 for layer in layers for i, n in enumerate(layer)}

    for sweep in range(sweeps):
        down = sweep % 2 == 0
        order = range(1, len(layers)) if down else range(len(layers) - 2, -1, -1)
        for li in order:
            pos = coords()
            layer = layers[li]

            def key(item: tuple[int, Any]) -> tuple[float, int]:
                i, n = item
                nbrs = list(graph.predecessors(n) if down else graph.successors(n))
                if not nbrs:
                    return (pos[n], i)
                return (sum(pos[m] for m in nbrs) / len(nbrs), i)

            layers[li] = [n for _, n in sorted(enumerate(layer), key=key)]
    return layers


def layered_positions(graph: nx.DiGraph, *, orientation: str = "horizontal",
                      sweeps: int = 4) -> dict[Any, tuple[float, float]]:
    """Positions with one column (or row) per topological generation, centred, one unit apart.

    Parameters
    ----------
    graph : a directed acyclic graph.
    orientation : ``"horizontal"`` (layers left to right) or ``"vertical"`` (top to bottom).
    sweeps : barycentre sweeps that reorder nodes within a layer to reduce edge crossings.

    Examples
    --------
    >>> g = nx.DiGraph([("data", "up"), ("up", "down"), ("data", "down")])
    >>> layered_positions(g)
    {'data': (0.0, 0.0), 'up': (1.0, 0.0), 'down': (2.0, 0.0)}
    """
    if orientation not in ("horizontal", "vertical"):
        raise ValueError(f"orientation must be 'horizontal' or 'vertical', got {orientation!r}")
    if not nx.is_directed_acyclic_graph(graph):
        raise ValueError("layered_positions needs a directed acyclic graph")
    layers = _order_layers(graph, [list(layer) for layer in nx.topological_generations(graph)],
                           sweeps)
    pos = {}
    for li, layer in enumerate(layers):
        for i, n in enumerate(layer):
            across = float((len(layer) - 1) / 2 - i)  # first node on top / on the left
            pos[n] = (float(li), across) if orientation == "horizontal" else (-across, float(-li))
    return pos


def choose_orientation(graph: nx.DiGraph) -> str:
    """``"horizontal"`` unless the system is much deeper than wide (then rows read better)."""
    layers = [len(layer) for layer in nx.topological_generations(graph)]
    if not layers:
        return "horizontal"
    return "horizontal" if len(layers) <= 8 or len(layers) <= 1.5 * max(layers) else "vertical"


def pipeline_graph(nodes: Mapping[str, Any]) -> nx.DiGraph:
    """The graph of a pipeline config's ``nodes`` block (wiring only; nothing is instantiated).

    Each ``inputs``/``targets`` reference ``"up.output"`` becomes an edge ``up -> node`` with
    the same ``refs`` attribute :class:`~entangle.system.System` puts on its edges, so that a
    report can draw a system from its config alone.
    """
    g = nx.DiGraph()
    for name, spec in nodes.items():
        g.add_node(str(name))
    for name, spec in nodes.items():
        for field in ("inputs", "targets"):
            wiring = (spec or {}).get(field) or {}
            for arg, ref in wiring.items():
                up, _, out = str(ref).partition(".")
                if up in g:
                    g.add_edge(up, str(name))
                    g.edges[up, str(name)].setdefault("refs", []).append((field, str(arg), out))
    return g


def _targets_only(graph: nx.DiGraph, u: Any, v: Any) -> bool:
    refs = graph.edges[u, v].get("refs") or []
    return bool(refs) and all(r[0] == "targets" for r in refs)


def _bend(pos: Mapping[Any, tuple[float, float]], u: Any, v: Any, along: int) -> float:
    """The arc3 ``rad`` for edge u -> v: 0 (straight) unless the straight line runs across
    another node's box; then a bend away from the nearest such node."""
    (x0, y0), (x1, y1) = pos[u], pos[v]
    lo, hi = sorted((pos[u][along], pos[v][along]))
    if hi - lo <= 1.01:
        return 0.0
    dx, dy = x1 - x0, y1 - y0
    best = None
    for w, (x, y) in pos.items():
        if w in (u, v) or not lo < (x, y)[along] < hi:
            continue
        t = ((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy)
        px, py = x0 + t * dx, y0 + t * dy
        if abs(px - x) < 0.35 and abs(py - y) < 0.22:
            dist = abs(px - x) + abs(py - y)
            if best is None or dist < best[0]:
                best = (dist, x - px, y - py)
    if best is None:
        return 0.0
    # matplotlib's arc3 puts the control point at midpoint + rad * (dy, -dx): bend the other way
    side = best[1] * dy - best[2] * dx
    return -0.2 if side > 0 else 0.2


def draw_system(graph: nx.DiGraph, status: Mapping[Any, str | None] | None = None, ax=None,
                title: str | None = None, *, highlight: Iterable[Any] = (),
                orientation: str = "auto"):
    """Draw ``graph`` with nodes coloured by ``status`` (a verdict per node); returns the figure.

    Parameters
    ----------
    graph : the system's graph (``System.graph``, or :func:`pipeline_graph` of a config).
    status : node -> verdict (``improved``, ``worse``, ``noise``, ``self-defeating``, ...);
        nodes without one are drawn light grey.
    ax : draw into this axes instead of a new figure sized to the graph.
    title : the axes title.
    highlight : nodes to outline thickly (the changed node of a study).
    orientation : ``"horizontal"``, ``"vertical"`` or ``"auto"`` (:func:`choose_orientation`).
    """
    status = dict(status or {})
    highlight = set(highlight)
    g = graph
    n = g.number_of_nodes()
    if orientation == "auto":
        orientation = choose_orientation(g)
    pos = layered_positions(g, orientation=orientation)
    layers = [len(layer) for layer in nx.topological_generations(g)] or [1]
    longest = max((len(str(v)) for v in g.nodes), default=4)
    fontsize = 10 if n <= 12 else 9 if n <= 30 else 8
    # one layer step ~ the widest label plus room for the arrow; one rank step ~ a text line
    char_in = fontsize / 72 * 0.62
    box_w = longest * char_in + 0.45
    if ax is None:
        if orientation == "horizontal":
            w, h = len(layers) * (box_w + 0.9) + 0.6, max(layers) * 0.95 + 1.2
        else:
            w, h = max(layers) * (box_w + 0.35) + 0.6, len(layers) * 0.85 + 1.2
        fig, ax = plt.subplots(figsize=(min(max(w, 4.0), 40.0), min(max(h, 2.4), 40.0)))
    else:
        fig = ax.figure
    texts = {}
    for v in g.nodes:
        s = status.get(v)
        face = VERDICT_COLORS.get(s, VERDICT_COLORS[None])
        thick = v in highlight
        style = dict(ha="center", va="center", fontsize=fontsize,
                     color="white" if s in DARK else "#212121",
                     fontweight="bold" if thick else "normal",
                     bbox=dict(boxstyle="round,pad=0.45", fc=face,
                               ec="#000000" if thick else "#37474f", lw=2.6 if thick else 0.9))
        # Two copies of each box: the arrows are clipped at the lower one's outline (its patch
        # is laid out before they draw, at any dpi) and the upper one hides edges passing behind.
        texts[v] = ax.text(*pos[v], str(v), zorder=3, **style)
        ax.text(*pos[v], str(v), zorder=5, **style)
    along = 0 if orientation == "horizontal" else 1
    for u, v in g.edges:
        dashed = _targets_only(g, u, v)
        rad = _bend(pos, u, v, along)
        ax.annotate("", xy=pos[v], xytext=pos[u], zorder=4,
                    arrowprops=dict(arrowstyle="-|>", mutation_scale=11 if n <= 30 else 8,
                                    color=_TARGET_EDGE if dashed else _EDGE,
                                    lw=0.9 if dashed else 1.2, ls="--" if dashed else "-",
                                    shrinkA=2, shrinkB=2,
                                    patchA=texts[u].get_bbox_patch(),
                                    patchB=texts[v].get_bbox_patch(),
                                    connectionstyle=f"arc3,rad={rad}"))
    xs = [p[0] for p in pos.values()] or [0.0]
    ys = [p[1] for p in pos.values()] or [0.0]
    pad_x, pad_y = (0.6, 0.6) if orientation == "horizontal" else (0.75, 0.5)
    ax.set_xlim(min(xs) - pad_x, max(xs) + pad_x)
    ax.set_ylim(min(ys) - pad_y, max(ys) + pad_y)
    handles = [Patch(fc=VERDICT_COLORS[s], ec="#37474f", label=s)
               for s in LEGEND_ORDER if s in set(status.values())]
    if any(status.get(v) is None for v in g.nodes) and handles:
        handles.append(Patch(fc=VERDICT_COLORS[None], ec="#37474f", label="not compared"))
    if highlight:
        handles.insert(0, Patch(fc="white", ec="black", lw=2.6, label="changed (outlined)"))
    if any(_targets_only(g, u, v) for u, v in g.edges):
        handles.append(Line2D([], [], color=_TARGET_EDGE, ls="--", label="ground truth only"))
    if handles:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0),
                  ncol=min(len(handles), 4), frameon=False, fontsize=9)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return fig
