"""report.html: the answer in words, sections chosen by report keys, figures embedded, nothing fetched."""

from __future__ import annotations

import base64
import json
import logging
from html.parser import HTMLParser

import matplotlib
import networkx as nx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from entangle.report.html import answer_text, render_html, render_run_dir, write_html  # noqa: E402
from entangle.report.summary import summary_lines  # noqa: E402


class Page(HTMLParser):
    """The tags, attributes and text of a page, for assertions."""

    def __init__(self, html: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def all(self, tag: str) -> list[dict]:
        return [a for t, a in self.tags if t == tag]

    @property
    def plain(self) -> str:
        return " ".join(" ".join(self.text).split())


def assert_self_contained(page: Page) -> None:
    """No scripts, no external resources: every image is an embedded, decodable PNG."""
    assert not page.all("script") and not page.all("link") and not page.all("iframe")
    for img in page.all("img"):
        src = img["src"]
        assert src.startswith("data:image/png;base64,"), src[:60]
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    for tag, attrs in page.tags:
        for key in ("src", "href"):
            value = attrs.get(key) or ""
            assert not value.startswith(("http:", "https:", "//")), (tag, value)


def save_png(path, text="figure"):
    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.text(0.5, 0.5, text)
    fig.savefig(path)
    plt.close(fig)


def study_report(**extra):
    report = {
        "changed": "upstream", "seeds": [0, 1, 2], "split": "test",
        "test": "paired t interval over seeds (95%)",
        "nodes": {
            "upstream": {"metric": "mse", "higher_is_better": False, "old": [11.7, 10.4, 10.9],
                         "new": [0.99, 1.05, 1.07], "delta_mean": -9.97,
                         "delta_ci": [-11.76, -8.19], "verdict": "improved", "retrained": True},
            "down_a": {"metric": "mse", "higher_is_better": False, "old": [0.43, 0.32, 0.41],
                       "new": [4.45, 4.64, 4.55], "delta_mean": 4.16, "delta_ci": [3.79, 4.53],
                       "verdict": "worse", "retrained": True},
            "down_b": {"metric": "acc", "higher_is_better": True, "old": [0.8, 0.81, 0.79],
                       "new": [0.8, 0.82, 0.79], "delta_mean": 0.003, "delta_ci": [-0.01, 0.016],
                       "verdict": "noise", "retrained": True},
        },
        "self_defeating": [{"upstream": "upstream", "downstream": "down_a"}],
        "store": {"hits": 0, "misses": 18, "root": "/somewhere"},
        "figures": ["study.png", "system.png"],
        "experiment": "toy_pipeline", "wall_time_s": 12.5,
    }
    report.update(extra)
    return report


def test_study_page_states_the_answer_with_intervals(tmp_path):
    save_png(tmp_path / "system.png")
    save_png(tmp_path / "study.png")
    save_png(tmp_path / "extra_plot.png")  # not listed by the report: embedded all the same
    path = write_html(study_report(), tmp_path)
    assert path == tmp_path / "report.html"
    page = Page(path.read_text())
    assert_self_contained(page)
    answer = answer_text(study_report())
    assert answer[0].startswith("Changing upstream improved on its own metric (mse↓ 11 → 1.037")
    assert answer[1] == ("Self-defeating: after retraining, down_a got worse "
                         "(mse↓ 0.3867 → 4.547, Δ +4.16 [+3.79, +4.53]).")
    assert answer[2] == "No change beyond noise: down_b."
    text = page.plain
    assert "Self-defeating: after retraining, down_a got worse" in text
    assert "[−11.8, −8.19]" in text and "[+3.79, +4.53]" in text
    assert sorted(img["alt"] for img in page.all("img")) == ["extra_plot.png", "study.png", "system.png"]
    # the table: one row per node, and the flagged one carries both badges
    rows = [r for r in page.tags if r[0] == "tr"]
    assert len(rows) == 4
    assert text.count("self-defeating") >= 1 and "acc ↑" in text and "mse ↓" in text
    assert "report.json" in text  # the raw report travels along, folded


def test_system_is_drawn_from_the_graph_when_the_run_has_no_picture(tmp_path):
    g = nx.DiGraph([("data", "upstream"), ("upstream", "down_a"), ("upstream", "down_b")])
    html = render_html(study_report(figures=[]), tmp_path, graph=g)
    page = Page(html)
    assert_self_contained(page)
    assert [img["alt"] for img in page.all("img")] == ["system (drawn from the pipeline config)"]


def change_report():
    iv = lambda m, lo, hi: {"mean": m, "sd": 0.1, "ci": [lo, hi], "per_seed": [m - 0.1, m, m + 0.1]}  # noqa: E731
    terms = lambda up: {"L*": iv(0.25, 0.2, 0.3), "upstream": iv(up, up - 0.1, up + 0.1),  # noqa: E731
                        "approximation": iv(0.0, 0.0, 0.0), "estimation": iv(0.01, 0.0, 0.02)}
    return {"downstream": "down_a", "changed": ["upstream"], "loss": "squared error",
            "old": {"terms": terms(0.17), "warnings": ["few seeds"], "estimators": {"L*": "closed form"}},
            "new": {"terms": terms(4.5), "warnings": []},
            "deltas": {"total": iv(4.4, 4.07, 4.73), "upstream": iv(4.33, 4.0, 4.6),
                       "approximation": iv(0.0, 0.0, 0.0), "estimation": iv(0.0, -0.01, 0.01)},
            "dominant_term": "upstream", "dominant": "upstream",
            "sentence": "Improving 'upstream' made 'down_a' worse, mostly through upstream error."}


def test_decomposition_bars_and_terms_come_from_the_report(tmp_path):
    report = study_report(decomposition={"down_a": change_report()}, figures=[])
    report["self_defeating"][0]["explanation"] = change_report()["sentence"]
    page = Page(render_html(report, tmp_path))
    assert_self_contained(page)
    assert "decomposition of down_a" in [img["alt"] for img in page.all("img")]
    text = page.plain
    assert "Why: Improving 'upstream' made 'down_a' worse" in text
    assert "+4.33 [+4, +4.6]" in text and "0.17 [0.07, 0.27]" in text  # deltas signed, levels not
    assert "few seeds" in text  # warnings are shown, not buried


def test_sweep_dataset_and_failed_reports_get_their_sections(tmp_path):
    sweep = {"sweep_dir": "multirun/x", "table": "summary.md",
             "jobs": [{"job": "0", "overrides": ["a=1"], "status": "ok", "down.delta": 0.5,
                       "down.verdict": "worse", "self_defeating": ["up->down"]},
                      {"job": "1", "overrides": ["a=2"], "status": "failed", "error": "boom"}],
             "failures": [{"job": "1", "overrides": ["a=2"], "error": "ValueError: boom"}]}
    assert answer_text(sweep) == ["Sweep of 2 jobs: 1 failed.", "Self-defeating in 1 of them: a=1: up->down."]
    text = Page(render_html(sweep, tmp_path)).plain
    assert "Sweep summary" in text and "ValueError: boom" in text
    check = {"root": "world", "n_frames": 8, "n_valid": 7, "n_problems": 1,
             "counts": {"Car": {"easy": 3, "hard": 1}, "Pedestrian": {"easy": 2, "hard": 0}},
             "problems": [{"file": "label_2/000003.txt", "line": 2, "field": "truncated",
                           "message": "must be in [0, 1]"}], "valid_ids": ["000000"]}
    assert answer_text(check) == ["Checked 8 frames under world: 7 valid, 1 problems."]
    text = Page(render_html(check, tmp_path)).plain
    assert "label_2/000003.txt" in text and "must be in [0, 1]" in text
    failed = {"status": "failed", "experiment": "x", "error": "RuntimeError: out of memory",
              "traceback": "Traceback ...\nRuntimeError"}
    assert answer_text(failed) == ["The run failed: RuntimeError: out of memory"]
    assert "This run failed" in Page(render_html(failed, tmp_path)).plain


def test_unknown_keys_degrade_to_tables(tmp_path):
    report = {"experiment": "new_analysis",
              "per_method": {"bm": {"epe": 2.7, "d1": 0.12}, "sgbm": {"epe": 1.5, "d1": 0.09}},
              "rows": [{"name": "a", "score": 1}, {"name": "b", "score": 2, "extra": True}],
              "long": list(range(500)), "headline": "<b>not markup</b> & plain"}
    html = render_html(report, tmp_path)
    page = Page(html)
    headers = [t for t, _ in page.tags if t == "th"]
    assert len(headers) >= 6
    text = page.plain
    assert "epe" in text and "sgbm" in text and "extra" in text
    assert "500 values; min 0, mean 249.5, max 499" in text
    assert "<b>not markup</b>" not in html and "&lt;b&gt;not markup&lt;/b&gt; &amp; plain" in html
    assert answer_text(report) == ["<b>not markup</b> & plain"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.text(max_size=10), json_values, max_size=6),
       st.text(alphabet="<>&\"'ab", min_size=1, max_size=12))
def test_any_report_renders_and_escapes(report, nasty):
    report = dict(report, injected=nasty + "<script>alert(1)</script>")
    html = render_html(report, None)
    assert "<script>" not in html
    Page(html)  # well formed enough for a parser
    summary_lines(report)  # and the terminal summary copes too


def test_summary_fits_one_screen_for_a_large_system():
    nodes = {f"node_{i}": {"metric": "mse", "higher_is_better": False, "old": [1.0, 1.1],
                           "new": [0.9, 1.0], "delta_mean": -0.1, "delta_ci": [-0.2, 0.0],
                           "verdict": "noise"} for i in range(40)}
    report = study_report(nodes=nodes, changed="node_0", self_defeating=[])
    lines = summary_lines(report, html="run/report.html", json_path="run/report.json")
    assert len(lines) <= 30
    assert lines[-3:-1] == ["  report: run/report.html", "  data:   run/report.json"]
    assert "  ... 25 more nodes in the report" in lines


def test_render_run_dir_needs_a_report(tmp_path):
    with pytest.raises(FileNotFoundError, match="no report.json"):
        render_run_dir(tmp_path)


def test_every_run_gets_a_page_and_a_summary(compose_cfg, tmp_path, caplog):
    """Through the shared entry point: here a sweep summary over a fake sweep folder."""
    from entangle.cli import run

    sweep = tmp_path / "sweep"
    for job, rep in {"0": study_report(), "1": {"status": "failed", "error": "boom"}}.items():
        (sweep / job / ".hydra").mkdir(parents=True)
        (sweep / job / ".hydra" / "overrides.yaml").write_text(f"- seed={job}\n")
        (sweep / job / "report.json").write_text(json.dumps(rep))
    cfg = compose_cfg("experiment=summarize", f"sweep_dir={sweep}", run_dir=tmp_path / "run")
    with caplog.at_level(logging.INFO, logger="entangle"):
        run(cfg)
    html = (tmp_path / "run" / "report.html").read_text()
    page = Page(html)
    assert_self_contained(page)
    assert "Sweep of 2 jobs: 1 failed." in page.plain
    summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith("summary")]
    assert summary and "Sweep of 2 jobs: 1 failed." in summary[-1]
    assert f"report: {tmp_path / 'run' / 'report.html'}" in summary[-1]


def test_other_runs_show_their_system_and_cap_what_they_embed(tmp_path, monkeypatch):
    import entangle.report.html as html_mod

    g = nx.DiGraph([("data", "model")])
    page = Page(render_html({"experiment": "stress", "value": 1}, tmp_path, graph=g))
    assert [img["alt"] for img in page.all("img")] == ["system (drawn from the pipeline config)"]
    assert "The system" in page.plain
    for name in ("a.png", "b.png"):
        save_png(tmp_path / name)
    size = (tmp_path / "a.png").stat().st_size
    monkeypatch.setattr(html_mod, "MAX_EMBEDDED_BYTES", size + 10)
    assert list(html_mod.collect_figures(tmp_path)) == ["a.png"]
    # a report cannot pull in files from outside its run dir
    (tmp_path.parent / "secret.txt").write_text("do not show")
    html = render_html({"table": "../secret.txt"}, tmp_path)
    assert "do not show" not in html


def test_named_records_and_flags_found_anywhere():
    report = {"experiment": "sweep_of_toys",
              "experiments": [{"name": "loss", "description": "a knob", "changes": [
                  {"knob": 1.0, "self_defeating": True, "sentence": "Improving 'u' made 'v' worse."},
                  {"knob": 2.0, "self_defeating": False, "sentence": "Not flagged."}]}]}
    assert answer_text(report) == ["Self-defeating (experiments › loss › changes › 0): "
                                   "Improving 'u' made 'v' worse."]
    text = Page(render_html(report, None)).plain
    assert "loss — a knob" in text


def test_hostile_strings_are_escaped_in_every_section(tmp_path):
    """A string from a report is text wherever a template puts it (cells, headings, captions,
    badges, attributes): markup in node, job, toy, corruption or file names never becomes markup."""
    from entangle.report.html import TEMPLATES, Context, SECTIONS

    bad = '<script>alert(1)</script>"\'&'
    iv = {"mean": 0.1, "ci": [0.0, 0.2], "per_seed": [0.1]}
    nodes = {bad: {"metric": bad, "higher_is_better": False, "old": [1.0, 1.1], "new": [0.5, 0.6],
                   "delta_mean": -0.5, "delta_ci": [-0.6, -0.4], "verdict": "improved", "retrained": True},
             "plain": {"metric": "acc", "verdict": bad}}
    change = {"sentence": bad, "deltas": {bad: iv}, "new": {"terms": {"upstream": iv, bad: iv}},
              "old": {"terms": {"upstream": iv, bad: iv}, "warnings": [bad], "estimators": {bad: bad}}}
    report = {
        "experiment": bad, "status": "failed", "error": bad, "traceback": bad, "seeds": [0, 1],
        "changed": bad, "nodes": nodes, "split": bad, "test": bad,
        "self_defeating": [{"upstream": bad, "downstream": bad, "explanation": bad}],
        "decomposition": {bad: change},
        "toys": [{"name": bad, "mechanism": bad, "description": bad, "sentence": bad,
                  "dominant_term": bad, "terms": {bad: {"delta": {"closed_form": iv, "estimate": iv}}}}],
        "criterion": bad,
        "underspecification": {bad: {"iid_sd": 0.1, "families": {bad: 2.0}, "subpopulations": {bad: 1.5},
                                     "corruptions": {bad: {"ratio": 2.0, "ratio_by_severity": [1.0]}}}},
        "severities": [bad],
        "jobs": [{"job": bad, "overrides": [bad, "a=1"], "status": bad, f"{bad}.delta": 0.5,
                  f"{bad}.verdict": bad, "self_defeating": [bad]},
                 {"job": "1", "overrides": [bad, "a=2"], "status": "ok"}],
        "failures": [{"job": bad, "overrides": [bad], "error": bad}], "sweep_dir": bad,
        "problems": [{"file": bad, "message": bad}], "counts": {bad: {bad: 1}}, "root": bad,
        "valid_ids": [bad], "references": {bad: [bad, 1]}, "headline": bad, bad: {bad: [{"name": bad}]},
    }
    save_png(tmp_path / "stress_x.png")
    html = render_html(report, tmp_path, title=bad, summary=[bad])
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert 'alt="stress_x.png"' in html and "\"'&<" not in html
    Page(html)
    # every section's template sits where the package data pattern (report/templates/*.j2) ships it
    ctx = Context(report, tmp_path, {})
    used = {s["template"] for build in SECTIONS for got in [build(report, ctx)] if got
            for s in (got if isinstance(got, list) else [got])}
    assert len(used) >= 8
    assert all("/" not in t and t.endswith(".j2") and (TEMPLATES / t).is_file() for t in used)
