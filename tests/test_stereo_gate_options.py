"""experiments/stereo_gate.py refuses a bad option in one line before any scene is rendered."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "experiments" / "stereo_gate.py"


@pytest.mark.parametrize("args, message", [
    (["--world", "{bad"], "--world: not JSON"),
    (["--net", "3"], "--net: a JSON object {...}, got 3"),
    (["--sgbm", "[]"], "--sgbm: a JSON object {...}, got []"),
    (["--world", '{"splits": [0.5, 0.5]}'], "--world: world.splits: expected 3 values"),
    (["--world", '{"splits": [0.25, 0.5, 0.25]}', "--root", "somewhere"],
     "--world changes the rendered world; --root reads a world as it is"),
])
def test_a_bad_option_is_refused_before_any_work(tmp_path, args, message):
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("stereo_gate.py: error: ") and message in last
    assert list(tmp_path.iterdir()) == []   # nothing rendered, nothing written
