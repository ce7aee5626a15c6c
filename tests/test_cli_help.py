"""``entangle --help`` lists every experiment with what its config says it does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from entangle.report.summary import experiment_help, experiments, header_comment

CONF = Path(__file__).resolve().parent.parent / "conf"


def test_every_experiment_config_says_what_it_does():
    found = experiments([CONF])
    assert found, "no experiment configs found"
    for name, (path, text) in found.items():
        first = path.read_text().splitlines()[0]
        assert first == "# @package _global_", f"{path.name}: first line must be '# @package _global_'"
        assert len(text.split()) >= 8, f"{path.name}: the header comment must say what it does"


def test_header_comment_stops_at_the_first_setting(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("# @package _global_\n# Does one thing\n#   python -m entangle experiment=x\n"
                    "task: a.b\n# not part of the header\n")
    assert header_comment(path) == "Does one thing\npython -m entangle experiment=x"


def test_help_lists_project_and_user_experiments(tmp_path):
    user = tmp_path / "my_conf" / "experiment"
    user.mkdir(parents=True)
    (user / "my_study.yaml").write_text("# @package _global_\n# My own study of a custom pipeline.\n"
                                        "task: entangle.tasks.study.run\n")
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run([sys.executable, "-m", "entangle", "--config-dir", str(tmp_path / "my_conf"),
                           "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("entangle: change one model")
    for name in experiments([CONF]):
        assert f"\n  {name} " in out, name
    assert "my_study" in out and "My own study of a custom pipeline." in out
    # the in-process text is the same listing
    assert experiment_help([CONF, tmp_path / "my_conf"]) == out
