"""A node's code version is its code's syntax tree: comments, docstrings and layout never refit."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

from entangle.data.toys import GaussianSource
from entangle.hashing import clear_code_cache
from entangle.system import NodeSpec, System

HELPER = '''\
"""Helpers of the node."""


def scale(x):
    """Twice x."""
    return 2.0 * x   # doubled


class Scaler:
    """Scales."""

    factor = 2.0
'''

NODES = textwrap.dedent('''
    from entangle.node import BaseNode
    from astpkg.helpers import scale

    class Scaled(BaseNode):
        input_kinds = {"x": "array"}
        target_kinds = {"y": "array"}
        output_kinds = {"pred": "array"}
        def __init__(self, *, alpha: float = 1.0):
            self.alpha = alpha
        def fit(self, inputs, targets, *, seed):
            return self
        def predict(self, inputs):
            return {"pred": scale(inputs["x"])}
    ''')


@pytest.fixture
def node_key(tmp_path, monkeypatch):
    """Writes the helper module's text, returns the key of the node that imports it."""
    (tmp_path / "astpkg").mkdir()
    (tmp_path / "astpkg" / "__init__.py").write_text("")
    (tmp_path / "astpkg" / "nodes.py").write_text(NODES)
    (tmp_path / "astpkg" / "helpers.py").write_text(HELPER)
    monkeypatch.syspath_prepend(str(tmp_path))
    nodes = importlib.import_module("astpkg.nodes")

    def key(helper_text: str) -> str:
        (tmp_path / "astpkg" / "helpers.py").write_text(helper_text)
        clear_code_cache()          # a new process would read the edited file
        system = System({"data": GaussianSource(weights={"y": [1.0, 2.0]}, sizes={"train": 5, "test": 5}),
                         "m": NodeSpec(nodes.Scaled(), inputs={"x": "data.x"}, targets={"y": "data.y"},
                                       output=True)})
        return system.keys(0)["m"]

    yield key
    clear_code_cache()
    for name in [m for m in sys.modules if m == "astpkg" or m.startswith("astpkg.")]:
        del sys.modules[name]


@pytest.mark.parametrize("edit", [
    lambda t: t.replace("# doubled", "# times two, as the paper says"),           # a comment
    lambda t: t + "\n# a comment at the end\n",
    lambda t: t.replace('"""Twice x."""', '"""Twice x: the scale the paper uses."""'),  # docstrings
    lambda t: t.replace('"""Helpers of the node."""\n', ""),
    lambda t: t.replace('    """Scales."""\n\n', ""),
    lambda t: t.replace("return 2.0 * x", "return (2.0*x)"),                     # layout
], ids=["comment", "trailing comment", "function docstring", "module docstring", "class docstring",
        "layout"])
def test_editing_comments_docstrings_or_layout_of_a_helper_keeps_the_key(node_key, edit):
    assert edit(HELPER) != HELPER
    assert node_key(edit(HELPER)) == node_key(HELPER)


@pytest.mark.parametrize("edit", [
    lambda t: t.replace("2.0 * x", "3.0 * x"),
    lambda t: t.replace("2.0 * x", "2 * x"),                   # an int is not a float
    lambda t: t.replace("factor = 2.0", "factor = 2.0\n    name = 'Scales.'"),
], ids=["constant", "type of a constant", "class attribute"])
def test_editing_the_code_of_a_helper_changes_the_key(node_key, edit):
    assert node_key(edit(HELPER)) != node_key(HELPER)


def test_code_digest_without_a_syntax_tree_falls_back_to_the_text():
    from entangle.hashing import code_digest
    assert code_digest("def broken(:\n") != code_digest("def broken(:  \n")
