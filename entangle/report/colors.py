"""Colours of verdicts, shared by the DAG drawing, the figures and the HTML report."""

from __future__ import annotations

#: colours of verdicts (improved / worse / noise / self-defeating) and of nodes without one.
VERDICT_COLORS = {"improved": "#2e7d32", "worse": "#c62828", "noise": "#9e9e9e",
                  "self-defeating": "#6a1b9a", "changed": "#1565c0", "incomparable": "#f9a825",
                  None: "#eceff1"}
#: verdicts whose colour is dark enough to need white text.
DARK = frozenset({"improved", "worse", "self-defeating", "changed"})
#: the order of verdicts in legends.
LEGEND_ORDER = ("changed", "improved", "worse", "self-defeating", "noise", "incomparable")
