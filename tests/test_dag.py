"""The system drawing: layered positions, crossing reduction, and readable figures at 3-50 nodes."""

from __future__ import annotations

import random
from itertools import combinations

import matplotlib
import networkx as nx
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from entangle.report.dag import (choose_orientation, draw_system, layer_of,  # noqa: E402
                                 layered_positions, pipeline_graph)


def test_positions_of_a_literal_graph():
    g = nx.DiGraph([("data", "up"), ("up", "down"), ("data", "down")])
    assert layered_positions(g) == {"data": (0.0, 0.0), "up": (1.0, 0.0), "down": (2.0, 0.0)}
    # top to bottom: layers go down the y axis
    assert layered_positions(g, orientation="vertical") == {
        "data": (-0.0, 0.0), "up": (-0.0, -1.0), "down": (-0.0, -2.0)}
    assert layer_of(g) == {"data": 0, "up": 1, "down": 2}


def crossings(g: nx.DiGraph, pos) -> int:
    """Pairs of edges between the same two layers whose ends swap order (they cross)."""
    count = 0
    for (a, b), (x, y) in combinations(list(g.edges), 2):
        if pos[a][0] == pos[x][0] and pos[b][0] == pos[y][0] and len({a, b, x, y}) == 4:
            count += (pos[a][1] - pos[x][1]) * (pos[b][1] - pos[y][1]) < 0
    return count


def test_layers_are_ordered_to_remove_crossings():
    g = nx.DiGraph()
    g.add_nodes_from("abcdefghi")
    g.add_edges_from([("a", "d"), ("a", "e"), ("a", "f"), ("d", "i"), ("f", "g"), ("f", "h"),
                      ("f", "i")])
    assert crossings(g, layered_positions(g, sweeps=0)) == 2  # the generations' own order
    assert crossings(g, layered_positions(g)) == 0
    # over many random three-layer graphs the sweeps remove a good share of the crossings
    before = after = 0
    for seed in range(100):
        rng = random.Random(seed)
        layers = [["a", "b", "c"], ["d", "e", "f"], ["g", "h", "i"]]
        g = nx.DiGraph()
        g.add_nodes_from(sum(layers, []))
        for i in (1, 2):
            for v in layers[i]:
                g.add_edges_from((u, v) for u in rng.sample(layers[i - 1], rng.randint(1, 2)))
        before += crossings(g, layered_positions(g, sweeps=0))
        after += crossings(g, layered_positions(g))
    assert after < 0.7 * before


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="acyclic"):
        layered_positions(nx.DiGraph([("a", "b"), ("b", "a")]))
    with pytest.raises(ValueError, match="orientation"):
        layered_positions(nx.DiGraph([("a", "b")]), orientation="diagonal")


def test_pipeline_graph_reads_wiring_without_instantiating():
    nodes = {
        "data": {"_target_": "no.such.Class"},
        "up": {"_target_": "no.such.Class", "inputs": {"x": "data.x"}, "targets": {"y": "data.y"}},
        "down": {"_target_": "no.such.Class", "inputs": {"z": "up.pred"}, "targets": {"y": "data.t"}},
    }
    g = pipeline_graph(nodes)
    assert set(g.edges) == {("data", "up"), ("up", "down"), ("data", "down")}
    assert g.edges["data", "down"]["refs"] == [("targets", "y", "t")]
    assert sorted(g.edges["data", "up"]["refs"]) == [("inputs", "x", "x"), ("targets", "y", "y")]


def test_deep_systems_are_drawn_top_to_bottom():
    assert choose_orientation(nx.path_graph(4, create_using=nx.DiGraph)) == "horizontal"
    assert choose_orientation(nx.path_graph(20, create_using=nx.DiGraph)) == "vertical"


def random_dag(n: int, seed: int) -> nx.DiGraph:
    """A DAG with realistic names: each node reads 1-3 of the few nodes before it."""
    rng = random.Random(seed)
    kinds = ["stereo", "depth", "pseudo_lidar", "car_detector", "ped_detector", "encoder", "ranker"]
    names = ["world"] + [f"{rng.choice(kinds)}_{i}" for i in range(1, n)]
    g = nx.DiGraph()
    g.add_nodes_from(names)
    for i in range(1, n):
        lo = max(0, i - 6)
        for j in rng.sample(range(lo, i), min(rng.randint(1, 3), i - lo)):
            g.add_edge(names[j], names[i])
    return g


@pytest.mark.parametrize("n", [3, 10, 50])
def test_drawing_is_readable(n, tmp_path):
    """Every node's label box is drawn, none overlaps another, text stays at a legible size."""
    g = random_dag(n, seed=n)
    status = {v: ["improved", "worse", "noise", "self-defeating", None][i % 5] for i, v in enumerate(g)}
    fig = draw_system(g, status, title=f"{n} nodes", highlight=[next(iter(g))])
    fig.savefig(tmp_path / "dag.png", dpi=80)
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    boxes = {}
    for t in ax.texts:
        if t.get_zorder() == 5:  # the upper copy of each node's box
            boxes[t.get_text()] = t.get_bbox_patch().get_window_extent(renderer)
            assert t.get_fontsize() >= 8
    assert set(boxes) == set(g.nodes)
    for (a, ba), (b, bb) in combinations(boxes.items(), 2):
        assert not ba.overlaps(bb), f"boxes of {a!r} and {b!r} overlap"
    canvas = fig.bbox
    for name, box in boxes.items():
        assert canvas.x0 <= box.x0 and box.x1 <= canvas.x1 and canvas.y0 <= box.y0 and box.y1 <= canvas.y1, name
    arrows = [c for c in ax.get_children() if isinstance(c, matplotlib.text.Annotation)]
    assert len(arrows) == g.number_of_edges()
    plt.close(fig)
    assert (tmp_path / "dag.png").stat().st_size > 5000
