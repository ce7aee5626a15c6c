"""Per-object depth errors: against the ground truth, and two predictions against each other."""

from __future__ import annotations

import numpy as np
import pytest

from entangle.analysis.object_errors import gate_table, object_errors
from entangle.data.labels import CAR, LABEL_COLUMNS, L


def _scene():
    """One 20 x 40 scene: a car at 15 m (rows 5-14, columns 10-29) in front of a wall at 50 m."""
    gt = np.full((1, 20, 40), 50.0)
    gt[0, 5:15, 10:30] = 15.0
    row = np.zeros(len(LABEL_COLUMNS))
    row[[L["cls"], L["z"], L["h"], L["w"], L["l"]]] = CAR, 15.0, 1.5, 1.6, 3.9
    row[[L["x1"], L["y1"], L["x2"], L["y2"]]] = 10, 5, 29, 14
    return gt, [row[None, :]]


def test_an_object_error_is_the_median_over_its_own_pixels_and_against_compares_two_predictions():
    gt, labels = _scene()
    a, b = gt + 0.3, gt - 0.1
    assert object_errors(a, gt, labels)["abs_error"] == pytest.approx([0.3])
    # against the ground truth itself: the same numbers, bit for bit
    for k, v in object_errors(a, gt, labels).items():
        np.testing.assert_array_equal(v, object_errors(a, gt, labels, against=gt)[k])
    apart = object_errors(a, gt, labels, against=b)
    assert apart["abs_error"] == pytest.approx([0.4])
    assert apart["z"] == pytest.approx([15.0]) and apart["pixels"][0] == 200   # own pixels: the truth's
    # where the other prediction has no value, the pixel does not count
    b[0, :, :20] = 0.0
    apart = object_errors(a, gt, labels, against=b)
    assert apart["abs_error"] == pytest.approx([0.4]) and apart["unmatched"] == pytest.approx([0.5])
    with pytest.raises(ValueError, match=r"compared against \(1, 20, 39\)"):
        object_errors(a, gt, labels, against=b[:, :, :39])


def test_gate_table_against_is_per_system_and_per_seed():
    gt, labels = _scene()
    start = gt + 0.5
    runs = [gt + 0.2, gt + 0.4]
    table = gate_table({"tuned": runs}, gt, labels, against={"tuned": start})
    cell = table["systems"]["tuned"]["car"]["10-20"]
    assert cell["medians"] == pytest.approx([0.3, 0.1]) and cell["n"] == 1
    per_seed = gate_table({"tuned": runs}, gt, labels, against={"tuned": [start, runs[0]]})
    assert per_seed["systems"]["tuned"]["car"]["10-20"]["medians"] == pytest.approx([0.3, 0.2])
    with pytest.raises(ValueError, match="system 'tuned': 2 predictions but 3"):
        gate_table({"tuned": runs}, gt, labels, against={"tuned": [start] * 3})
    # a misspelt system would silently turn distances back into errors: refused instead
    with pytest.raises(ValueError, match=r"against names \['tunde'\]"):
        gate_table({"tuned": runs}, gt, labels, against={"tunde": start})
