"""docs/custom_pipeline.md runs as written: its files are written and its commands run, in order.

The tutorial's fenced blocks are executed like a reader would: a block with ``file=PATH`` after
its language is saved to PATH (relative to the current folder); a ``bash`` block runs in a shell
that starts where the previous one ended (``cd`` carries over). Then what the text claims about
the results is checked against the reports the commands wrote.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "custom_pipeline.md"
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```[ \t]*$", re.M | re.S)


def code_blocks(text: str) -> list[tuple[str, dict[str, str], str]]:
    """Every fenced block as (language, ``key=value`` attributes of its info string, body)."""
    out = []
    for m in FENCE.finditer(text):
        attrs = dict(a.split("=", 1) for a in m.group(2).split() if "=" in a)
        out.append((m.group(1), attrs, m.group(3)))
    return out


def test_code_blocks_are_found():
    blocks = code_blocks("text\n```python file=a/b.py\nx = 1\n```\n```bash\necho hi\n```\n")
    assert blocks == [("python", {"file": "a/b.py"}, "x = 1\n"), ("bash", {}, "echo hi\n")]


def run_tutorial(root: Path) -> tuple[Path, str]:
    """Execute the tutorial in ``root``; returns the folder it ends in and everything printed."""
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "PYTHONPATH")}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["ENTANGLE_PROGRESS"] = "0"
    cwd, printed = root, []
    state = root / ".tutorial_cwd"
    for lang, attrs, body in code_blocks(DOC.read_text()):
        if "file" in attrs:
            path = cwd / attrs["file"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body)
        elif lang == "bash":
            script = f"set -euo pipefail\n{body}\npwd > '{state}'\n"
            proc = subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True,
                                  text=True, timeout=600)
            assert proc.returncode == 0, f"tutorial block failed:\n{body}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            printed.append(proc.stdout + proc.stderr)
            cwd = Path(state.read_text().strip())
    return cwd, "\n".join(printed)


def test_tutorial_runs_as_written(tmp_path):
    lab, printed = run_tutorial(tmp_path)
    assert lab == tmp_path / "my_lab"
    assert "SGDLinear passes the node contract" in printed
    assert "{'x': (50, 2), 't': (50,), 'y_a': (50,), 'y_b': (50,)}" in printed   # the source loads
    assert "my_study" in printed and "My study: relaxing the penalty" in printed
    assert "_target_: my_source.TwoSensors\n      size: 2000" in printed   # --cfg job: the profile's size

    # what section 4 says the study shows
    study = json.loads((lab / "runs" / "study" / "report.json").read_text())
    verdicts = {n: r["verdict"] for n, r in study["nodes"].items()}
    assert verdicts == {"upstream": "improved", "down_a": "worse", "down_b": "improved"}
    assert study["self_defeating"][0]["upstream"] == "upstream"
    assert study["self_defeating"][0]["downstream"] == "down_a"
    assert study["decomposition"]["down_a"]["dominant_term"] == "upstream"
    html = (lab / "runs" / "study" / "report.html").read_text()
    assert "Self-defeating" in html and "Error decomposition" in html

    # section 5: both analyses ran on the same system and wrote their pages
    stress = json.loads((lab / "runs" / "stress" / "report.json").read_text())
    assert set(stress["underspecification"]["down_a"]["subpopulations"]) == {"x0_high", "x1_high"}
    instability = json.loads((lab / "runs" / "instability" / "report.json").read_text())
    assert set(instability["instability"]) == {"upstream", "down_a", "down_b"}
    assert instability["changed"] == "upstream"
    for name in ("stress", "instability"):
        assert (lab / "runs" / name / "report.html").stat().st_size > 5000
