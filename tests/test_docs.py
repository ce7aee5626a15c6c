"""The documentation's links resolve, and the docs index names every page it promises."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(path: Path) -> list[str]:
    """Links of a markdown file that point into the repository (not URLs, not in-page anchors)."""
    links = []
    for target in LINK.findall(path.read_text()):
        if target.startswith(("http:", "https:", "mailto:", "#")):
            continue
        links.append(target.split("#", 1)[0])
    return links


def test_links_of_readme_and_docs_resolve():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    for page in pages:
        for target in relative_links(page):
            assert (page.parent / target).exists(), f"{page.relative_to(REPO)}: broken link {target}"


def test_readme_and_index_link_the_documentation():
    readme = relative_links(REPO / "README.md")
    for page in ("docs/index.md", "docs/custom_pipeline.md", "datasets/world.md"):
        assert page in readme, page
    index = (REPO / "docs" / "index.md").read_text()
    for anchor in ("## Concepts", "## Reading a report", "## Experiments", "## Performance"):
        assert anchor in index
    assert set(relative_links(REPO / "docs" / "index.md")) >= {
        "custom_pipeline.md", "../datasets/world.md", "../README.md", "../experiments"}


def test_ci_runs_the_readme_test_command_which_lints_before_testing():
    readme = [line for line in (REPO / "README.md").read_text().splitlines() if "python -m pytest" in line]
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert [ci.replace("pip install -q ", "pip install ")] == readme[:1]
    assert "&& ruff check . && python -m pytest" in ci


def test_the_linter_finds_undefined_names_and_unused_imports(tmp_path):
    import subprocess
    import sys
    bad = tmp_path / "bad.py"
    bad.write_text("import json\n\n\ndef f():\n    return scores\n")
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--config",
                           str(REPO / "pyproject.toml"), str(bad)], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "F401" in proc.stdout and "F821" in proc.stdout
