"""``report.html``: one self-contained page per run that shows a reader the answer without the JSON.

Every experiment gets one, written by :func:`entangle.cli.run` beside ``report.json``. The page
is built from the report dict alone (plus the PNG figures in the run dir, embedded as base64,
so the file can be mailed and opened offline: no scripts, no network fetches). Sections are
chosen by the keys present:

- improvement study (``changed``, ``nodes``, ``self_defeating``): the answer in words, the
  system drawn with nodes coloured by verdict, the per-node table with paired intervals;
- error decomposition (``decomposition`` or ``toys``): term tables and bars;
- sweep summary (``jobs``, ``failures``), dataset checks (``problems``, ``counts``);
- analyses (``references``, ``stress``, ``instability``, ``churn``, ``directions``,
  ``regions``, ...): each its own section;
- anything else: a generic table (:func:`entangle.report.format.value_html`), so a new key
  degrades gracefully instead of breaking the page.

Sections are functions of ``(report, context)`` registered in :data:`SECTIONS`; a new analysis
adds its own by appending one.
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import networkx as nx
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from entangle.report.format import (figure_id, fmt_interval, fmt_number, fmt_signed,
                                    interval_html, interval_svg, is_interval, records_table,
                                    value_html, verdict_badge)

log = logging.getLogger(__name__)

#: the file name of the page in a run dir.
REPORT_HTML = "report.html"
#: report.json is embedded (collapsed) at the end of the page when smaller than this.
MAX_EMBEDDED_JSON = 200_000
#: figures are embedded until their PNG files add up to this (a page must stay openable).
MAX_EMBEDDED_BYTES = 40 * 2**20
TEMPLATES = Path(__file__).resolve().parent / "templates"

# Keys every report may carry that describe the run rather than a result.
META_KEYS = ("experiment", "status", "profile", "seeds", "split", "wall_time_s")


@dataclass
class Section:
    """One section of the page: an anchor id, a title and its HTML."""

    id: str
    title: str
    body: Markup


@dataclass
class Context:
    """What sections share: the run dir's figures (embedded once each) and the system graph."""

    report: Mapping[str, Any]
    run_dir: Path | None
    figures: dict[str, str]
    graph: nx.DiGraph | None = None
    used_keys: set[str] = field(default_factory=set)
    used_figures: set[str] = field(default_factory=set)
    drew_system: bool = False

    def claim(self, *keys: str) -> None:
        """Mark report keys as shown, so the generic section skips them."""
        self.used_keys.update(k for k in keys if k in self.report)

    def figure(self, name: str, caption: str = "") -> Markup:
        """The embedded figure ``name`` from the run dir (once per page), or nothing."""
        if name not in self.figures or name in self.used_figures:
            return Markup("")
        self.used_figures.add(name)
        return figure_html(name, self.figures[name], caption)

    def figures_matching(self, predicate: Callable[[str], bool], caption: str = "") -> Markup:
        """Every not yet shown figure whose name satisfies ``predicate``."""
        return Markup("").join(self.figure(n, caption) for n in list(self.figures)
                               if predicate(n))

    def text_file(self, name: Any) -> str | None:
        """The text of a small ``.txt``/``.md`` artefact the report names, if it is in the run dir."""
        if not isinstance(name, str) or self.run_dir is None:
            return None
        path = (self.run_dir / name).resolve()
        if not path.is_relative_to(self.run_dir.resolve()):
            return None  # only the run dir's own files
        if path.suffix not in (".txt", ".md", ".csv") or not path.is_file():
            return None
        if path.stat().st_size > 500_000:
            return None
        return path.read_text(errors="replace")


def figure_html(name: str, data_uri: str, caption: str = "") -> Markup:
    """An embedded image with its file name (and caption) below it."""
    cap = Markup("<code>{}</code>").format(name)
    if caption:
        cap = Markup("{} — {}").format(caption, cap)
    return Markup('<figure id="fig-{}"><img src="{}" alt="{}"><figcaption>{}</figcaption>'
                  '</figure>').format(figure_id(name), Markup(data_uri), name, cap)


def png_data_uri(data: bytes) -> str:
    """A ``data:`` URI of PNG bytes (how figures travel inside the page)."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def matplotlib_uri(fig, dpi: int = 110) -> str:
    """A matplotlib figure as a PNG data URI; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return png_data_uri(buf.getvalue())


def collect_figures(run_dir: Path | None, listed: Iterable[str] = ()) -> dict[str, str]:
    """Every PNG under ``run_dir`` (hidden folders skipped) as name -> data URI.

    The report's own ``figures`` come first, in its order; the rest follow sorted by path.
    """
    if run_dir is None or not Path(run_dir).is_dir():
        return {}
    run_dir = Path(run_dir)
    found = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*.png")
                   if not any(part.startswith(".") for part in p.relative_to(run_dir).parts))
    order = [n for n in listed if n in found] + [n for n in found if n not in listed]
    out, total = {}, 0
    for n in order:
        data = (run_dir / n).read_bytes()
        total += len(data)
        if total > MAX_EMBEDDED_BYTES:
            log.warning("report.html: figures beyond %d MB are not embedded (from %s on)",
                        MAX_EMBEDDED_BYTES // 2**20, n)
            break
        out[n] = png_data_uri(data)
    return out


def listed_figures(report: Mapping[str, Any]) -> list[str]:
    """The figure names a report lists (``figures`` list or dict, or a single ``figure``)."""
    names: list[str] = []
    figs = report.get("figures")
    if isinstance(figs, Mapping):
        figs = list(figs.values())
    for f in figs or []:
        if isinstance(f, str):
            names.append(f)
    if isinstance(report.get("figure"), str):
        names.append(report["figure"])
    return names


# -- sections ------------------------------------------------------------------------------

def _mean(values: Any) -> float | None:
    vals = [float(v) for v in values or [] if v is not None and math.isfinite(float(v))]
    return sum(vals) / len(vals) if vals else None


def _sd(values: Any) -> float | None:
    vals = [float(v) for v in values or [] if v is not None]
    if len(vals) < 2:
        return None
    m = sum(vals) / len(vals)
    return math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def study_nodes(report: Mapping[str, Any]) -> dict[str, Any] | None:
    """The per-node comparison of a study: ``nodes`` (or ``study``) when it holds paired deltas."""
    if "changed" not in report:
        return None
    for key in ("nodes", "study"):
        nodes = report.get(key)
        if isinstance(nodes, Mapping) and nodes and all(isinstance(r, Mapping) for r in nodes.values()) \
                and any("delta_mean" in r or "verdict" in r for r in nodes.values()):
            return dict(nodes)
    return None


def node_status(report: Mapping[str, Any]) -> dict[str, str | None]:
    """Each node's colour: its verdict, ``self-defeating`` for flagged downstream nodes."""
    status = {name: r.get("verdict") for name, r in (study_nodes(report) or {}).items()}
    for flag in report.get("self_defeating") or []:
        status[flag.get("downstream")] = "self-defeating"
    return status


def _metric_change(r: Mapping[str, Any]) -> str:
    arrow = {True: "↑", False: "↓"}.get(r.get("higher_is_better"), "")
    return (f"{r.get('metric')}{arrow} {fmt_number(_mean(r.get('old')))} → "
            f"{fmt_number(_mean(r.get('new')))}, Δ {fmt_signed(r.get('delta_mean'))} "
            f"{fmt_interval(r.get('delta_ci'))}")


def study_answer(report: Mapping[str, Any]) -> list[Markup]:
    """The study's answer in sentences: did the change help itself, and whom did it hurt."""
    nodes = study_nodes(report)
    if nodes is None:
        return []
    changed = report.get("changed")
    out: list[Markup] = []
    own = nodes.get(changed, {})
    if "delta_mean" in own:
        word = {"improved": "improved", "worse": "got worse", "noise": "did not change beyond noise"}
        out.append(Markup("Changing <b>{}</b> {} on its own metric ({}).").format(
            changed, word.get(own.get("verdict"), own.get("verdict")), _metric_change(own)))
    flags = report.get("self_defeating") or []
    for f in flags:
        r = nodes.get(f.get("downstream"), {})
        out.append(Markup('<span class="flag">Self-defeating:</span> after retraining, <b>{}</b> '
                          'got worse ({}).').format(f.get("downstream"), _metric_change(r)))
        if f.get("explanation"):
            out.append(Markup('<span class="why">Why: {}</span>').format(f["explanation"]))
    flagged = {f.get("downstream") for f in flags}
    others = [n for n in nodes if n != changed and n not in flagged]
    groups: dict[str, list[str]] = {}
    for n in others:
        groups.setdefault(nodes[n].get("verdict") or "not compared", []).append(n)
    text = {"improved": "Also improved", "worse": "Worse (but not flagged)",
            "noise": "No change beyond noise", "incomparable": "Metric changed, not comparable"}
    for verdict, names in groups.items():
        out.append(Markup("{}: {}.").format(text.get(verdict, verdict.capitalize()),
                                            Markup(", ").join(Markup("<b>{}</b>").format(n)
                                                              for n in names)))
    if not flags and "delta_mean" in own:
        out.append(Markup("No self-defeating improvement was found over {} seeds.").format(
            len(report.get("seeds") or [])))
    return out


def _node_table(report: Mapping[str, Any]) -> Markup:
    nodes = study_nodes(report) or {}
    status = node_status(report)
    rows = []
    for name, r in nodes.items():
        if "delta_mean" not in r:
            rows.append(Markup('<tr><th>{}</th><td>{}</td><td colspan="6"></td><td>{}</td>'
                               '<td></td></tr>').format(name, r.get("metric"),
                                                        verdict_badge(r.get("verdict"))))
            continue
        arrow = {True: "↑", False: "↓"}.get(r.get("higher_is_better"), "")
        badges = verdict_badge(r.get("verdict"))
        if status.get(name) == "self-defeating":
            badges += Markup(" ") + verdict_badge("self-defeating")
        changed = Markup(' <span class="muted">(changed)</span>') if name == report.get("changed") else ""

        def spread(vals: Any) -> Markup:
            sd = _sd(vals)
            return Markup('<span class="num" title="per seed: {}">{}{}</span>').format(
                ", ".join(fmt_number(v) for v in vals or []), fmt_number(_mean(vals)),
                Markup(' <span class="muted">± {}</span>').format(fmt_number(sd, 2)) if sd is not None else "")

        rows.append(Markup(
            '<tr><th>{}{}</th><td>{} {}</td><td>{}</td><td>{}</td><td class="num">{}</td>'
            '<td class="num">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>').format(
            name, changed, r.get("metric"), arrow, spread(r.get("old")), spread(r.get("new")),
            fmt_signed(r.get("delta_mean")), fmt_interval(r.get("delta_ci")),
            interval_svg(r.get("delta_mean"), r.get("delta_ci"), status.get(name)), badges,
            {True: "yes", False: "no"}.get(r.get("retrained"), "–")))
    head = ("<tr><th>node</th><th>metric</th><th>old (mean ± sd)</th><th>new (mean ± sd)</th>"
            "<th>Δ new − old</th><th>95% interval</th><th>interval vs 0</th><th>verdict</th>"
            "<th>retrained</th></tr>")
    return Markup('<div class="scroll"><table class="data nodes"><thead>{}</thead><tbody>{}</tbody>'
                  '</table></div>').format(Markup(head), Markup("").join(rows))


def study_section(report: Mapping[str, Any], ctx: Context) -> Section | None:
    """The improvement study: the answer, the system by verdict, the per-node table."""
    nodes = study_nodes(report)
    if nodes is None:
        return None
    key = "nodes" if report.get("nodes") == nodes else "study"
    ctx.claim("changed", key, "self_defeating", "seeds", "split", "test", "store")
    parts = []
    dag = ctx.figure("system.png", "The system: nodes coloured by verdict, the changed node outlined")
    if not dag and ctx.graph is not None:
        from entangle.report.dag import draw_system
        fig = draw_system(ctx.graph, node_status(report), highlight=[report.get("changed")])
        dag = figure_html("system (drawn from the pipeline config)", matplotlib_uri(fig),
                          "The system: nodes coloured by verdict")
    ctx.drew_system = ctx.drew_system or bool(dag)
    parts.append(dag)
    seeds = report.get("seeds") or []
    parts.append(Markup('<p class="muted">Paired over {} seeds ({}) on split <code>{}</code>; '
                        '{}. A node is <i>improved</i> or <i>worse</i> only when the interval '
                        'excludes zero; ↑/↓ says which direction of the metric is better.</p>')
                 .format(len(seeds), ", ".join(str(s) for s in seeds), report.get("split", "test"),
                         report.get("test", "paired t interval")))
    parts.append(_node_table(report))
    parts.append(ctx.figure("study.png", "Old vs new metric per seed (grey: one seed; colour: mean)"))
    store = report.get("store")
    if isinstance(store, Mapping):
        parts.append(Markup('<p class="muted">Store: {} fits reused, {} computed.</p>').format(
            store.get("hits"), store.get("misses")))
    return Section("study", "Improvement study", Markup("").join(parts))


_TERM_ORDER = ("L*", "upstream", "approximation", "estimation", "compatibility", "total")


def _term_rows(change: Mapping[str, Any]) -> list[tuple[str, Any, Any, Any]]:
    old_terms = (change.get("old") or {}).get("terms") or {}
    new_terms = (change.get("new") or {}).get("terms") or {}
    deltas = change.get("deltas") or {}
    names = [t for t in _TERM_ORDER if t in old_terms or t in deltas]
    names += [t for t in list(old_terms) + list(deltas) if t not in names]
    rows = []
    for t in names:
        rows.append((t, old_terms.get(t), new_terms.get(t), deltas.get(t)))
    return rows


def _cell(v: Any, signed: bool = False) -> Markup:
    if v is None:
        return Markup('<span class="muted">–</span>')
    return interval_html(v, signed=signed) if is_interval(v) else value_html(v)


def decomposition_block(name: str, change: Mapping[str, Any], ctx: Context) -> Markup:
    """One change decomposition: its sentence, term table (old, new, delta) and bars."""
    parts = [Markup("<h3>{}</h3>").format(name)]
    if change.get("sentence"):
        parts.append(Markup('<p class="answer-line">{}</p>').format(change["sentence"]))
    rows = Markup("").join(
        Markup("<tr><th>{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>").format(
            t, _cell(o), _cell(n), _cell(d, signed=True),
            interval_svg((d or {}).get("mean"), (d or {}).get("ci")) if is_interval(d) else "")
        for t, o, n, d in _term_rows(change))
    parts.append(Markup(
        '<div class="scroll"><table class="data"><thead><tr><th>term</th><th>old</th><th>new</th>'
        '<th>Δ (95% interval)</th><th>Δ vs 0</th></tr></thead><tbody>{}</tbody></table></div>')
        .format(rows))
    fig = ctx.figures_matching(lambda n: n.startswith("decomposition") and name in n)
    if not fig and change.get("deltas"):
        from entangle.report.figures import decomposition_figure
        fig = figure_html(f"decomposition of {name}", matplotlib_uri(decomposition_figure(change)),
                          "Terms old vs new (stacked) and their paired deltas")
    parts.append(fig)
    facts = {k: change[k] for k in ("changed", "loss", "dominant", "dominant_term",
                                    "downstream_verdict", "upstream_verdicts", "self_defeating")
             if k in change}
    parts.append(value_html(facts))
    warnings = list((change.get("old") or {}).get("warnings") or []) + list(
        (change.get("new") or {}).get("warnings") or []) + list(change.get("warnings") or [])
    if warnings:
        parts.append(Markup('<div class="warn"><b>Warnings</b><ul>{}</ul></div>').format(
            Markup("").join(Markup("<li>{}</li>").format(w) for w in warnings)))
    est = (change.get("old") or {}).get("estimators")
    if est:
        parts.append(Markup("<details><summary>How each term is estimated</summary>{}</details>")
                     .format(value_html(est)))
    return Markup("").join(parts)


def decomposition_section(report: Mapping[str, Any], ctx: Context) -> Section | None:
    """The error decomposition of flagged pairs (``decomposition``: downstream -> change)."""
    dec = report.get("decomposition")
    if not isinstance(dec, Mapping):
        return None
    ctx.claim("decomposition")
    if not dec:
        return Section("decomposition", "Error decomposition",
                       Markup('<p class="muted">Nothing to decompose: no flagged pair was covered.</p>'))
    blocks = []
    for name, change in dec.items():
        if isinstance(change, Mapping) and ("deltas" in change or "old" in change):
            blocks.append(decomposition_block(str(name), change, ctx))
        else:
            blocks.append(Markup("<h3>{}</h3>{}").format(name, value_html(change)))
    intro = Markup('<p class="muted">L(v̂∘u) − L* = upstream error [L*(u) − L*] + approximation '
                   'error [L_H(u) − L*(u)] + estimation error [L(v̂∘u) − L_H(u)]; each term is '
                   'estimated per seed and its change given with a paired 95% interval.</p>')
    return Section("decomposition", "Error decomposition", intro + Markup("").join(blocks))


def _toys(report: Mapping[str, Any]) -> list[Mapping[str, Any]] | None:
    toys = report.get("toys")
    if not isinstance(toys, list) or not toys or not all(isinstance(t, Mapping) for t in toys):
        return None
    return toys


def toys_answer(report: Mapping[str, Any]) -> list[Markup]:
    """How many toy systems the decomposition got right (closed-form agreement, mechanism)."""
    toys = _toys(report)
    if toys is None:
        return []
    n_dom = sum(bool(t.get("dominant_correct")) for t in toys)
    n_agree = sum(bool(t.get("all_agree")) for t in toys)
    out = [Markup("Decomposition checked on {} toy systems: every estimate agrees with its "
                  "closed form in <b>{}</b> of them; the engine names the right mechanism "
                  "in <b>{}</b>.").format(len(toys), f"{n_agree}/{len(toys)}", f"{n_dom}/{len(toys)}")]
    for t in toys:
        if not t.get("dominant_correct"):
            out.append(Markup("{}: expected the {} term to dominate, the engine named {}.").format(
                t.get("name"), t.get("mechanism"), t.get("dominant_term")))
    return out


def toys_section(report: Mapping[str, Any], ctx: Context) -> Section | None:
    """Decomposition checked against closed forms on toy systems (``toys``)."""
    toys = _toys(report)
    if toys is None:
        return None
    ctx.claim("toys", "all_agree", "all_dominant_correct", "criterion")
    parts = []
    if report.get("criterion"):
        parts.append(Markup('<p class="muted">Agreement: {}.</p>').format(report["criterion"]))
    parts.append(ctx.figures_matching(lambda n: "decomposition" in n,
                                      "Estimated terms (bars) against closed forms (ticks)"))
    for toy in toys:
        name = toy.get("name", "toy")
        ok = "✓" if toy.get("dominant_correct") else "✗"
        parts.append(Markup("<h3>{} <span class=\"muted\">— mechanism: {}</span></h3>").format(
            name, toy.get("mechanism")))
        if toy.get("description"):
            parts.append(Markup("<p>{}</p>").format(toy["description"]))
        if toy.get("sentence"):
            parts.append(Markup('<p class="answer-line">{}</p>').format(toy["sentence"]))
        parts.append(Markup("<p>Dominant term named: <b>{}</b> {} · self-defeating: {} · all "
                            "estimates agree: {}</p>").format(
            toy.get("dominant_term"), ok, "yes" if toy.get("self_defeating") else "no",
            "yes" if toy.get("all_agree") else "no"))
        rows = []
        for term, sides in (toy.get("terms") or {}).items():
            for side, p in (sides or {}).items():
                if not isinstance(p, Mapping):
                    continue
                rows.append(Markup("<tr><th>{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>")
                            .format(term, side, _cell(p.get("closed_form"), side == "delta"),
                                    _cell(p.get("estimate"), side == "delta"),
                                    "✓" if p.get("agrees") else Markup('<b class="bad">✗</b>')))
        if rows:
            parts.append(Markup(
                '<details><summary>Terms: closed form vs estimate</summary><div class="scroll">'
                '<table class="data"><thead><tr><th>term</th><th>side</th><th>closed form</th>'
                '<th>estimate (95% interval)</th><th>agrees</th></tr></thead><tbody>{}</tbody>'
                '</table></div></details>').format(Markup("").join(rows)))
        rest = {k: v for k, v in toy.items() if k not in (
            "name", "mechanism", "description", "sentence", "terms", "dominant_term",
            "dominant_correct", "self_defeating", "all_agree")}
        parts.append(Markup("<details><summary>Details</summary>{}</details>").format(value_html(rest)))
    return Section("toys", "Decomposition against closed forms", Markup("").join(parts))


def sweep_answer(report: Mapping[str, Any]) -> list[Markup]:
    """How many jobs ran and failed, and which found a self-defeating improvement."""
    jobs = report.get("jobs")
    if not isinstance(jobs, list) or "failures" not in report:
        return []
    failures = report.get("failures") or []
    out = [Markup("Sweep of <b>{}</b> jobs: {} failed.").format(len(jobs), len(failures))]
    flagged = [j for j in jobs if isinstance(j, Mapping) and j.get("self_defeating")]
    if flagged:
        out.append(Markup("Self-defeating in {} of them: {}.").format(
            len(flagged), "; ".join(f"{' '.join(j.get('overrides') or []) or j.get('job')}: "
                                    f"{', '.join(j['self_defeating'])}" for j in flagged)))
    return out


def sweep_section(report: Mapping[str, Any], ctx: Context) -> Section | None:
    """A sweep summary (``jobs``, ``failures``): one row per job, failed jobs with their errors."""
    jobs = report.get("jobs")
    if not isinstance(jobs, list) or "failures" not in report:
        return None
    ctx.claim("jobs", "failures", "sweep_dir", "table")
    failures = report.get("failures") or []
    cols = sorted({k for j in jobs for k in j if k.endswith(".delta")})
    head = Markup("").join(Markup("<th>{}</th>").format(c[:-6] + " Δ") for c in cols)
    rows = []
    for j in jobs:
        cells = Markup("").join(
            Markup('<td class="num">{} {}</td>').format(fmt_signed(j[c]), verdict_badge(j.get(c[:-6] + ".verdict")))
            if c in j else Markup("<td></td>") for c in cols)
        status = j.get("status")
        rows.append(Markup('<tr class="{}"><th>{}</th><td><code>{}</code></td><td>{}</td>{}<td>{}</td></tr>')
                    .format("failed" if status != "ok" else "", j.get("job"),
                            " ".join(j.get("overrides") or []), status, cells,
                            ", ".join(j.get("self_defeating") or [])))
    parts = [Markup("<p>Sweep folder: <code>{}</code></p>").format(report.get("sweep_dir", "")),
             Markup('<div class="scroll"><table class="data"><thead><tr><th>job</th><th>overrides</th>'
                    '<th>status</th>{}<th>self-defeating</th></tr></thead><tbody>{}</tbody></table></div>')
             .format(head, Markup("").join(rows))]
    parts.append(ctx.figure("summary.png", "Paired delta per job and node"))
    if failures:
        parts.append(Markup("<h3>Failed jobs</h3>") + records_table(failures))
    return Section("sweep", "Sweep summary", Markup("").join(parts))


def dataset_answer(report: Mapping[str, Any]) -> list[Markup]:
    """How many frames were checked and how many problems were found."""
    if "problems" not in report or "counts" not in report:
        return []
    return [Markup("Checked <b>{}</b> frames under <code>{}</code>: {} valid, <b>{}</b> problems.")
            .format(report.get("n_frames", "?"), report.get("root", ""), report.get("n_valid", "?"),
                    len(report.get("problems") or []))]


def dataset_section(report: Mapping[str, Any], ctx: Context) -> Section | None:
    """Dataset checks (``problems``, ``counts``): what was counted and every problem found."""
    if "problems" not in report or "counts" not in report:
        return None
    ctx.claim("problems", "counts", "n_frames", "n_valid", "n_problems", "root", "image_sizes",
              "valid_ids")
    problems = report.get("problems") or []
    parts = [Markup("<h3>Objects per class and difficulty (valid frames)</h3>"),
             value_html(report.get("counts"))]
    if report.get("image_sizes"):
        parts += [Markup("<h3>Image sizes</h3>"), value_html(report["image_sizes"])]
    parts.append(Markup("<h3>Problems</h3>"))
    parts.append(records_table(problems) if problems else Markup('<p class="ok">None.</p>'))
    ids = report.get("valid_ids") or []
    if ids:
        parts.append(Markup("<details><summary>{} valid frame ids</summary><p>{}</p></details>")
                     .format(len(ids), ", ".join(map(str, ids[:2000]))))
    return Section("dataset", "Dataset check", Markup("").join(parts))


def _ratio_cell(ratio: Any) -> Markup:
    """An underspecification ratio, shaded by size (1 = no extra spread under stress)."""
    if not isinstance(ratio, (int, float)) or not math.isfinite(ratio):
        return Markup('<td class="muted">–</td>')
    alpha = max(0.0, min(1.0, (ratio - 1.0) / 3.0))
    return Markup('<td class="num" style="background:rgba(106,27,154,{:.2f})">{}×</td>').format(
        0.45 * alpha, fmt_number(ratio, 3))


def _stress(report: Mapping[str, Any]) -> Mapping[str, Any] | None:
    under = report.get("underspecification")
    if isinstance(under, Mapping) and under and all(isinstance(u, Mapping) and "iid_sd" in u
                                                    for u in under.values()):
        return under
    return None


def stress_answer(report: Mapping[str, Any]) -> list[Markup]:
    """Per node: the i.i.d. seed spread and how much larger it gets under the worst stress."""
    under = _stress(report)
    if under is None:
        return []
    nodes = report.get("nodes") or {}
    out = []
    for name, u in list(under.items())[:6]:
        ratios = {c: v.get("ratio") for c, v in (u.get("corruptions") or {}).items()
                  if isinstance(v, Mapping) and isinstance(v.get("ratio"), (int, float))}
        ratios.update({f"subpopulation {p}": r for p, r in (u.get("subpopulations") or {}).items()
                       if isinstance(r, (int, float))})
        metric = (nodes.get(name) or {}).get("metric", "metric")
        if not ratios:
            continue
        worst = max(ratios, key=ratios.get)
        out.append(Markup("<b>{}</b> ({}): seeds differ by sd {} on i.i.d. test data; under "
                          "stress their spread grows up to <b>{}×</b> ({}).").format(
            name, metric, fmt_number(u.get("iid_sd"), 3), fmt_number(ratios[worst], 3), worst))
    return out


def stress_section(report: Mapping[str, Any], ctx: Context) -> Section | None:
    """The stress test: underspecification ratios per node, corruption and subpopulation."""
    under = _stress(report)
    if under is None:
        return None
    keys = ("underspecification", "rank_correlation", "corruption_metrics", "subpopulations",
            "corruptions", "severities", "skipped_corruptions", "corruption_seed", "images", "pairs",
            "system_outputs")
    ctx.claim(*keys)
    nodes = report.get("nodes") if isinstance(report.get("nodes"), Mapping) else {}
    if nodes and all(isinstance(r, Mapping) and "iid_sd" in r for r in nodes.values()):
        ctx.claim("nodes")
    families = list(dict.fromkeys(f for u in under.values() for f in (u.get("families") or {})))
    subpops = list(dict.fromkeys(p for u in under.values() for p in (u.get("subpopulations") or {})))
    head = Markup("").join(Markup("<th>{}</th>").format(f) for f in families)
    head += Markup("").join(Markup("<th>{}</th>").format(p) for p in subpops)
    rows = []
    for name, u in under.items():
        n = nodes.get(name) or {}
        iid = Markup('{} <span class="muted">± {}</span>').format(
            fmt_number(n.get("iid_mean")), fmt_number(u.get("iid_sd"), 2)) if n else fmt_number(u.get("iid_sd"))
        cells = Markup("").join(_ratio_cell((u.get("families") or {}).get(f)) for f in families)
        cells += Markup("").join(_ratio_cell((u.get("subpopulations") or {}).get(p)) for p in subpops)
        rows.append(Markup("<tr><th>{}</th><td>{}</td><td>{}</td>{}</tr>").format(
            name, n.get("metric", ""), iid, cells))
    parts = [Markup(
        '<p class="muted">Underspecification ratio: the seed-to-seed standard deviation of a '
        "node's metric under stress over its spread on i.i.d. test data (for a subpopulation, over "
        "random subsets of the same size). Above 1, seeds that tie on i.i.d. data come apart under "
        "stress. Nothing is retrained.</p>"),
        Markup('<div class="scroll"><table class="data"><thead><tr><th colspan="3"></th>'
               '<th colspan="{}">corruption families</th><th colspan="{}">subpopulations</th></tr>'
               "<tr><th>node</th><th>metric</th><th>i.i.d. mean ± sd</th>{}</tr>"
               "</thead><tbody>{}</tbody></table></div>").format(
            len(families), len(subpops), head, Markup("").join(rows))]
    rank = report.get("rank_correlation") or {}
    for name, u in under.items():
        corr = u.get("corruptions") or {}
        if not corr:
            continue
        sev = report.get("severities") or []
        body = []
        for c, v in corr.items():
            if not isinstance(v, Mapping):
                continue
            rc = ((rank.get(name) or {}).get(c) or {}).get("mean")
            body.append(Markup("<tr><th>{}</th>{}<td>{}</td><td>{}</td><td>{}</td></tr>").format(
                c, _ratio_cell(v.get("ratio")),
                ", ".join(f"{fmt_number(x, 3)}×" if x is not None else "–" for x in v.get("ratio_by_severity") or []),
                ", ".join(fmt_signed(x) for x in v.get("mean_change") or []), fmt_number(rc, 3)))
        parts.append(Markup(
            "<details><summary>{}: per corruption (severities {})</summary><div class=\"scroll\">"
            '<table class="data"><thead><tr><th>corruption</th><th>ratio</th><th>ratio by severity</th>'
            "<th>mean change by severity</th><th>seed rank correlation with i.i.d.</th></tr></thead>"
            "<tbody>{}</tbody></table></div></details>").format(
            name, ", ".join(map(str, sev)), Markup("").join(body)))
    parts.append(ctx.figures_matching(lambda n: n.startswith("stress"),
                                      "Metric per seed under each corruption and severity"))
    settings = {k: report[k] for k in ("corruptions", "severities", "skipped_corruptions",
                                       "corruption_seed", "images", "pairs", "system_outputs")
                if k in report}
    parts.append(Markup("<details><summary>Settings</summary>{}</details>").format(value_html(settings)))
    for key in ("corruption_metrics", "subpopulations"):
        if key in report:
            parts.append(Markup("<details><summary>{} (per seed)</summary>{}</details>").format(
                key, value_html(report[key], depth=2)))
    return Section("stress", "Stress test (underspecification)", Markup("").join(parts))


#: report keys of analyses that get a section of their own, with its title.
ANALYSIS_TITLES = {
    "references": "References",
    "stress": "Stress test (underspecification)",
    "underspecification": "Underspecification",
    "instability": "Local instability",
    "churn": "Version churn",
    "mitigation": "Mitigation",
    "mitigations": "Mitigations",
    "directions": "Failure directions",
    "regions": "Misclassification regions",
}


def analysis_sections(report: Mapping[str, Any], ctx: Context) -> list[Section]:
    """One section per known analysis key, each rendered by the generic renderer with its figures."""
    out = []
    for key, title in ANALYSIS_TITLES.items():
        if key not in report or key in ctx.used_keys:
            continue
        ctx.claim(key)
        body = value_html(report[key], figures=ctx.figures)
        figs = ctx.figures_matching(lambda n, key=key: key in n.lower() or
                                    (key.endswith("s") and key[:-1] in n.lower()))
        out.append(Section(key, title, body + figs))
    return out


def generic_section(report: Mapping[str, Any], ctx: Context) -> Section | None:
    """Every key no other section showed: scalars in one table, the rest nested."""
    rest = {k: v for k, v in report.items()
            if k not in ctx.used_keys and k not in META_KEYS and k not in ("figures", "figure")}
    if not rest:
        return None
    ctx.claim(*rest)
    parts = []
    for key in ("table", "tables"):
        text = ctx.text_file(rest.get(key))
        if text is not None:
            parts.append(Markup("<details><summary>{}</summary><pre>{}</pre></details>").format(
                rest.pop(key), text))
    if rest:
        parts.insert(0, value_html(rest, figures=ctx.figures))
    return Section("results", "Results", Markup("").join(parts))


def system_section(report: Mapping[str, Any], ctx: Context) -> Section | None:
    """The system the run used, when no study section has drawn it (its picture or its config)."""
    if ctx.drew_system:
        return None
    dag = ctx.figure("system.png", "The system")
    if not dag and ctx.graph is not None and ctx.graph.number_of_nodes():
        from entangle.report.dag import draw_system
        dag = figure_html("system (drawn from the pipeline config)", matplotlib_uri(draw_system(ctx.graph)),
                          "The system this run used")
    if not dag:
        return None
    ctx.drew_system = True
    return Section("system", "The system", dag)


def failed_section(report: Mapping[str, Any], ctx: Context) -> Section | None:
    """A failed run (``status: failed``): the error first, the traceback folded."""
    if report.get("status") != "failed":
        return None
    ctx.claim("error", "traceback")
    body = Markup('<div class="error"><b>{}</b></div>').format(report.get("error", "unknown error"))
    if report.get("traceback"):
        body += Markup("<details><summary>Traceback</summary><pre>{}</pre></details>").format(
            report["traceback"])
    return Section("failure", "This run failed", body)


def failed_answer(report: Mapping[str, Any]) -> list[Markup]:
    """A failed run says so first."""
    if report.get("status") != "failed":
        return []
    return [Markup('<span class="flag">The run failed:</span> {}').format(report.get("error"))]


#: sentence-like keys an analysis may put in its report (top level or in its block).
SENTENCE_KEYS = ("headline", "sentence", "summary", "conclusion")


def sentences_answer(report: Mapping[str, Any]) -> list[Markup]:
    """Sentences the report states itself: top-level ``headline``/``sentence``/``summary`` strings
    and those of each analysis block."""
    out = [Markup("{}").format(report[k]) for k in SENTENCE_KEYS if isinstance(report.get(k), str)]
    for key in ANALYSIS_TITLES:
        block = report.get(key)
        if isinstance(block, Mapping):
            out += [Markup("{}: {}").format(ANALYSIS_TITLES[key], block[k]) for k in SENTENCE_KEYS
                    if isinstance(block.get(k), str)]
    return out


def _walk(value: Any, path: tuple[str, ...], depth: int):
    """(path, mapping) for every mapping inside ``value`` down to ``depth`` levels."""
    if depth < 0:
        return
    if isinstance(value, Mapping):
        yield path, value
        for k, v in value.items():
            yield from _walk(v, path + (str(k),), depth - 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            label = v.get("name") if isinstance(v, Mapping) and isinstance(v.get("name"), str) else str(i)
            yield from _walk(v, path + (label,), depth - 1)


def flagged_answer(report: Mapping[str, Any], limit: int = 6) -> list[Markup]:
    """Self-defeating findings stated anywhere in the report (``self_defeating: true`` beside a
    ``sentence``), e.g. one per toy or per knob value; the study's own flags are stated already."""
    out = []
    for key, value in report.items():
        if key in ("nodes", "decomposition", "self_defeating") or isinstance(value, (str, int, float)):
            continue
        for path, m in _walk(value, (key,), 5):
            if m.get("self_defeating") is True and isinstance(m.get("sentence"), str):
                out.append(Markup('<span class="flag">Self-defeating</span> ({}): {}').format(
                    " › ".join(path), m["sentence"]))
    if len(out) > limit:
        out = out[:limit] + [Markup("… and {} more in the sections below.").format(len(out) - limit)]
    return out


#: answer builders: each returns the sentences it can state about a report (often none).
ANSWERS: list[Callable[[Mapping[str, Any]], list[Markup]]] = [
    failed_answer, study_answer, toys_answer, stress_answer, sweep_answer, dataset_answer,
    flagged_answer, sentences_answer,
]


def answer(report: Mapping[str, Any]) -> list[Markup]:
    """The answer of a run in a few sentences (HTML), from every builder in :data:`ANSWERS`."""
    return [line for build in ANSWERS for line in build(report)]


def answer_text(report: Mapping[str, Any]) -> list[str]:
    """:func:`answer` as plain text, for the terminal."""
    return [line.striptags() for line in answer(report)]


#: section builders in page order; each returns a Section, a list of them, or None.
SECTIONS: list[Callable[[Mapping[str, Any], Context], Section | list[Section] | None]] = [
    failed_section, study_section, system_section, decomposition_section, toys_section,
    stress_section, sweep_section, dataset_section, analysis_sections, generic_section,
]


def _figures_section(ctx: Context) -> Section | None:
    rest = [n for n in ctx.figures if n not in ctx.used_figures]
    if not rest:
        return None
    body = Markup("").join(ctx.figure(n) for n in rest)
    return Section("figures", "Figures", body)


def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)),
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=True,
                      lstrip_blocks=True)
    return env


def render_html(report: Mapping[str, Any], run_dir: Path | str | None = None, *,
                graph: nx.DiGraph | None = None, title: str | None = None,
                summary: Iterable[str] | None = None) -> str:
    """The page for ``report`` (a ``report.json`` dict) with the PNGs of ``run_dir`` embedded.

    Parameters
    ----------
    report : the run's report, as written to ``report.json``.
    run_dir : the run dir whose PNG figures (and named text tables) are embedded.
    graph : the system graph, drawn coloured by verdict where the run dir has no ``system.png``.
    title : the page title (default: ``entangle · EXPERIMENT``).
    summary : the experiment's own text summary (its task module's ``summary_lines``), shown
        at the top where no section states the answer in sentences, folded otherwise.
    """
    run_dir = Path(run_dir) if run_dir is not None else None
    ctx = Context(report, run_dir, collect_figures(run_dir, listed_figures(report)), graph)
    sections: list[Section] = []
    for build in SECTIONS:
        got = build(report, ctx)
        if got is None:
            continue
        sections.extend(got if isinstance(got, list) else [got])
    figs = _figures_section(ctx)
    if figs:
        sections.append(figs)
    meta = {k: report[k] for k in META_KEYS if k in report}
    raw = json.dumps(report, indent=1, default=str)
    experiment = report.get("experiment") or "run"
    return _env().get_template("report.html.j2").render(
        title=title or f"entangle · {experiment}", experiment=experiment, meta=meta,
        meta_html={k: value_html(v) for k, v in meta.items() if k != "experiment"},
        answer=answer(report), summary=list(summary or []),
        summary_open=not isinstance(report.get("nodes"), Mapping) or study_nodes(report) != report["nodes"],
        sections=sections,
        raw_json=raw if len(raw) <= MAX_EMBEDDED_JSON else None, raw_size=len(raw),
        generated=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"))


def write_html(report: Mapping[str, Any], run_dir: Path | str, *, graph: nx.DiGraph | None = None,
               summary: Iterable[str] | None = None, name: str = REPORT_HTML) -> Path:
    """Write ``report.html`` (atomically) into ``run_dir``; returns its path."""
    run_dir = Path(run_dir)
    path = run_dir / name
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(render_html(report, run_dir, graph=graph, summary=summary), encoding="utf-8")
    tmp.replace(path)
    return path


def render_run_dir(run_dir: Path | str, *, graph: nx.DiGraph | None = None,
                   summary: Iterable[str] | None = None) -> Path:
    """(Re)write ``report.html`` of a run dir from its ``report.json`` (e.g. after an upgrade)."""
    run_dir = Path(run_dir)
    path = run_dir / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no report.json to render")
    return write_html(json.loads(path.read_text()), run_dir, graph=graph, summary=summary)
