"""report.html in a real headless browser: no console errors, no requests, every figure drawn.

Chromium comes from the system's packages (Debian: ``apt-get install chromium``), driven by
Playwright's Python package; set ``ENTANGLE_CHROMIUM`` to use another binary. Without either the
test skips and says what is missing. ``ENTANGLE_SCREENSHOTS=DIR`` keeps the screenshots there.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    """The Chromium binary: ``ENTANGLE_CHROMIUM`` or the system's package."""
    explicit = os.environ.get("ENTANGLE_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
    exe = chromium_path()
    if exe is None:
        pytest.skip("no Chromium found: install the system package (apt-get install chromium) "
                    "or set ENTANGLE_CHROMIUM=/path/to/chrome")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, args=LAUNCH_ARGS)
        yield b
        b.close()


def open_and_check(browser, html: Path, shot_name: str) -> dict:
    """Load ``html`` and check it: no console errors or warnings, no request leaves the file, every
    image decoded with a non-zero size on screen. Saves a full-page screenshot; returns facts."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    console, failed, requests = [], [], []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    page.on("requestfailed", lambda r: failed.append(r.url))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(html.as_uri(), wait_until="load")
    images = page.eval_on_selector_all(
        "img", """els => els.map(e => { const r = e.getBoundingClientRect();
            return {alt: e.alt, complete: e.complete, natural: [e.naturalWidth, e.naturalHeight],
                    shown: [r.width, r.height]}; })""")
    answer = page.locator("#answer").inner_text() if page.locator("#answer").count() else ""
    shot = html.parent / shot_name
    page.screenshot(path=str(shot), full_page=True)
    keep = os.environ.get("ENTANGLE_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot_name)
    page.close()
    assert console == [], console
    assert failed == [], failed
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    for img in images:
        assert img["complete"] and min(img["natural"]) > 0, img
        assert min(img["shown"]) > 0, img
    assert shot.stat().st_size > 10_000
    return {"images": images, "answer": answer}


def test_a_real_study_report_in_chromium(browser, compose_cfg, tmp_path):
    """The toy improvement study end to end: the page shows the answer and both figures."""
    from entangle.cli import run

    cfg = compose_cfg("experiment=toy_pipeline", "profile=quick", "seeds=[0,1]",
                      f"store.root={tmp_path / 'store'}", run_dir=tmp_path / "run")
    report = run(cfg)
    facts = open_and_check(browser, tmp_path / "run" / "report.html", "toy_pipeline.png")
    assert sorted(i["alt"] for i in facts["images"]) == sorted(report["figures"])
    assert "Self-defeating: after retraining, down_a got worse" in facts["answer"]


def test_every_kind_of_section_in_chromium(browser, tmp_path):
    """Decomposition bars, sweeps, dataset checks, failures and unknown keys all render cleanly."""
    from test_report_html import change_report, study_report

    from entangle.report.html import write_html

    cases = {
        "decomposition": study_report(decomposition={"down_a": change_report()}, figures=[]),
        "sweep": {"experiment": "summarize", "sweep_dir": "multirun/x",
                  "jobs": [{"job": "0", "overrides": ["a=1"], "status": "ok", "down.delta": 0.5,
                            "down.verdict": "worse", "self_defeating": ["up->down"]}],
                  "failures": []},
        "dataset": {"experiment": "check_dataset", "root": "world", "n_frames": 1, "n_valid": 0,
                    "counts": {}, "problems": [{"file": "calib/000000.txt", "line": 1,
                                                "field": "P2", "message": "missing"}]},
        "failed": {"experiment": "x", "status": "failed", "error": "ValueError: <bad> & worse"},
        "generic": {"experiment": "new", "nested": {"a": {"b": {"c": [1, 2, 3]}}},
                    "rows": [{"x": 1}, {"x": 2}]},
    }
    for name, report in cases.items():
        run_dir = tmp_path / name
        run_dir.mkdir()
        (run_dir / "report.json").write_text(json.dumps(report))
        facts = open_and_check(browser, write_html(report, run_dir), f"{name}.png")
        if name == "decomposition":
            assert [i["alt"] for i in facts["images"]] == ["decomposition of down_a"]
        if name == "failed":
            assert "The run failed: ValueError: <bad> & worse" in facts["answer"]
