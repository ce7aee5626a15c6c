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
- anything else: a generic table (:func:`entangle.report.format.value_view`), so a new key
  degrades gracefully instead of breaking the page.

This module only turns a report into plain data: each section builder, a function of
``(report, context)`` registered in :data:`SECTIONS`, returns a dict naming its template in
``templates/`` and the strings and numbers that template shows; the answer is a list of
sentences, each a list of text segments. All markup lives in the templates (``report.html.j2``,
one template per section, shared macros in ``macros.html.j2``), autoescaped. A new analysis
adds its section by appending a builder and a template.
"""

from __future__ import annotations

import base64
import datetime as _dt
import functools
import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import networkx as nx
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from entangle.report.colors import DARK, VERDICT_COLORS
from entangle.report.format import (cell_view, figure_id, fmt_interval, fmt_number, fmt_signed,
                                    glyph_view, is_interval, records_view, split_overrides,
                                    value_view)

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

#: one sentence of the answer: plain strings and ``{"style", "text"}`` segments, ``style`` one of
#: ``b``, ``code``, ``flag`` (a finding), ``why`` (its explanation), ``muted``.
Sentence = list[Any]
#: a section of the page: ``id``, ``title``, ``template`` and the data that template shows.
Section = dict[str, Any]


def _em(style: str, text: Any) -> dict[str, str]:
    """A text segment drawn with ``style`` (see :data:`Sentence`)."""
    return {"style": style, "text": str(text)}


def section(id: str, title: str, template: str, **data: Any) -> Section:
    """A section of the page: its anchor, title, template file and what the template shows."""
    return {"id": id, "title": title, "template": template, **data}


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

    def figure(self, name: str, caption: str = "") -> dict[str, str] | None:
        """The embedded figure ``name`` from the run dir (once per page), or None."""
        if name not in self.figures or name in self.used_figures:
            return None
        self.used_figures.add(name)
        return figure_view(name, self.figures[name], caption)

    def figures_matching(self, predicate: Callable[[str], bool], caption: str = "") -> list[dict[str, str]]:
        """Every not yet shown figure whose name satisfies ``predicate``."""
        found = (self.figure(n, caption) for n in list(self.figures) if predicate(n))
        return [f for f in found if f is not None]

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


def figure_view(name: str, data_uri: str, caption: str = "") -> dict[str, str]:
    """An embedded image: its file name (shown below it and used as its anchor) and caption."""
    return {"name": name, "id": figure_id(name), "src": data_uri, "caption": caption}


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


# -- the improvement study ------------------------------------------------------------------

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


def _arrow(r: Mapping[str, Any]) -> str:
    """Which direction of a node's metric is better."""
    return {True: "↑", False: "↓"}.get(r.get("higher_is_better"), "")


def _metric_change(r: Mapping[str, Any]) -> str:
    return (f"{r.get('metric')}{_arrow(r)} {fmt_number(_mean(r.get('old')))} → "
            f"{fmt_number(_mean(r.get('new')))}, Δ {fmt_signed(r.get('delta_mean'))} "
            f"{fmt_interval(r.get('delta_ci'))}")


def study_answer(report: Mapping[str, Any]) -> list[Sentence]:
    """The study's answer in sentences: did the change help itself, and whom did it hurt."""
    nodes = study_nodes(report)
    if nodes is None:
        return []
    changed = report.get("changed")
    out: list[Sentence] = []
    own = nodes.get(changed, {})
    if "delta_mean" in own:
        word = {"improved": "improved", "worse": "got worse", "noise": "did not change beyond noise"}
        out.append(["Changing ", _em("b", changed),
                    f" {word.get(own.get('verdict'), own.get('verdict'))} on its own metric "
                    f"({_metric_change(own)})."])
    flags = report.get("self_defeating") or []
    for f in flags:
        r = nodes.get(f.get("downstream"), {})
        out.append([_em("flag", "Self-defeating:"), " after retraining, ", _em("b", f.get("downstream")),
                    f" got worse ({_metric_change(r)})."])
        if f.get("explanation"):
            out.append([_em("why", f"Why: {f['explanation']}")])
    flagged = {f.get("downstream") for f in flags}
    groups: dict[str, list[str]] = {}
    for n in nodes:
        if n != changed and n not in flagged:
            groups.setdefault(nodes[n].get("verdict") or "not compared", []).append(n)
    text = {"improved": "Also improved", "worse": "Worse (but not flagged)",
            "noise": "No change beyond noise", "incomparable": "Metric changed, not comparable"}
    for verdict, names in groups.items():
        line: Sentence = [f"{text.get(verdict, str(verdict).capitalize())}: "]
        for i, n in enumerate(names):
            line += [", "] * (i > 0) + [_em("b", n)]
        out.append(line + ["."])
    if not flags and "delta_mean" in own:
        out.append([f"No self-defeating improvement was found over {len(report.get('seeds') or [])} seeds."])
    return out


def _spread(values: Any) -> dict[str, Any]:
    """Values over seeds as mean ± sd, each seed's value for a tooltip."""
    sd = _sd(values)
    return {"mean": fmt_number(_mean(values)), "sd": fmt_number(sd, 2) if sd is not None else None,
            "title": "per seed: " + ", ".join(fmt_number(v) for v in values or [])}


def _node_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per node of the study: metric, old and new spread, paired delta, verdicts."""
    status = node_status(report)
    rows = []
    for name, r in (study_nodes(report) or {}).items():
        verdicts = [r.get("verdict")] + ["self-defeating"] * (status.get(name) == "self-defeating")
        row = {"name": name, "changed": name == report.get("changed"), "metric": str(r.get("metric")),
               "compared": "delta_mean" in r, "verdicts": verdicts}
        if row["compared"]:
            row.update(arrow=_arrow(r), old=_spread(r.get("old")), new=_spread(r.get("new")),
                       delta=fmt_signed(r.get("delta_mean")), ci=fmt_interval(r.get("delta_ci")),
                       glyph=glyph_view(r.get("delta_mean"), r.get("delta_ci"), status.get(name)),
                       retrained={True: "yes", False: "no"}.get(r.get("retrained"), "–"))
        rows.append(row)
    return rows


def _drawn_system(ctx: Context, status: Mapping[str, Any] | None, highlight: list[Any],
                  caption: str) -> dict[str, str] | None:
    """The system drawn from the pipeline's graph, where the run dir has no picture of it."""
    if ctx.graph is None or not ctx.graph.number_of_nodes():
        return None
    from entangle.report.dag import draw_system  # matplotlib only for runs that need a drawing
    fig = draw_system(ctx.graph, status, highlight=highlight)
    return figure_view("system (drawn from the pipeline config)", matplotlib_uri(fig), caption)


def study_section(report: Mapping[str, Any], ctx: Context) -> Section | None:
    """The improvement study: the answer, the system by verdict, the per-node table."""
    nodes = study_nodes(report)
    if nodes is None:
        return None
    key = "nodes" if report.get("nodes") == nodes else "study"
    ctx.claim("changed", key, "self_defeating", "seeds", "split", "test", "store")
    system = (ctx.figure("system.png", "The system: nodes coloured by verdict, the changed node outlined")
              or _drawn_system(ctx, node_status(report), [report.get("changed")],
                               "The system: nodes coloured by verdict"))
    ctx.drew_system = ctx.drew_system or system is not None
    seeds = report.get("seeds") or []
    store = report.get("store")
    return section("study", "Improvement study", "study.html.j2", system=system,
                   n_seeds=len(seeds), seeds=", ".join(str(s) for s in seeds),
                   split=str(report.get("split", "test")),
                   test=str(report.get("test", "paired t interval")), rows=_node_rows(report),
                   figure=ctx.figure("study.png", "Old vs new metric per seed (grey: one seed; colour: mean)"),
                   store={"hits": str(store.get("hits")), "misses": str(store.get("misses"))}
                   if isinstance(store, Mapping) else None)


def system_section(report: Mapping[str, Any], ctx: Context) -> Section | None:
    """The system the run used, when no study section has drawn it (its picture or its config)."""
    if ctx.drew_system:
        return None
    dag = ctx.figure("system.png", "The system") or _drawn_system(ctx, None, [], "The system this run used")
    if dag is None:
        return None
    ctx.drew_system = True
    return section("system", "The system", "generic.html.j2", figures=[dag])


# -- the error decomposition ----------------------------------------------------------------

_TERM_ORDER = ("L*", "upstream", "approximation", "estimation", "compatibility", "total")


def _term_rows(change: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per term: old and new level, paired delta with its glyph."""
    old_terms = (change.get("old") or {}).get("terms") or {}
    new_terms = (change.get("new") or {}).get("terms") or {}
    deltas = change.get("deltas") or {}
    names = [t for t in _TERM_ORDER if t in old_terms or t in deltas]
    names += [t for t in list(old_terms) + list(deltas) if t not in names]
    rows = []
    for t in names:
        d = deltas.get(t)
        rows.append({"term": t, "old": cell_view(old_terms.get(t)), "new": cell_view(new_terms.get(t)),
                     "delta": cell_view(d, signed=True),
                     "glyph": glyph_view(d.get("mean"), d.get("ci")) if is_interval(d) else None})
    return rows


def decomposition_block(name: str, change: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    """One change decomposition: its sentence, term table (old, new, delta), bars and facts."""
    figs = ctx.figures_matching(lambda n: n.startswith("decomposition") and name in n)
    if not figs and change.get("deltas"):
        from entangle.report.figures import decomposition_figure  # matplotlib only when drawing
        figs = [figure_view(f"decomposition of {name}", matplotlib_uri(decomposition_figure(change)),
                            "Terms old vs new (stacked) and their paired deltas")]
    facts = {k: change[k] for k in ("changed", "loss", "dominant", "dominant_term",
                                    "downstream_verdict", "upstream_verdicts", "self_defeating")
             if k in change}
    warnings = [str(w) for side in (change.get("old") or {}, change.get("new") or {}, change)
                for w in side.get("warnings") or []]
    est = (change.get("old") or {}).get("estimators")
    return {"name": name, "value": None, "sentence": change.get("sentence"),
            "rows": _term_rows(change), "figures": figs, "facts": value_view(facts),
            "warnings": warnings, "estimators": value_view(est) if est else None}


def decomposition_section(report: Mapping[str, Any], ctx: Context) -> Section | None:
    """The error decomposition of flagged pairs (``decomposition``: downstream -> change)."""
    dec = report.get("decomposition")
    if not isinstance(dec, Mapping):
        return None
    ctx.claim("decomposition")
    blocks = [decomposition_block(str(name), change, ctx)
              if isinstance(change, Mapping) and ("deltas" in change or "old" in change)
              else {"name": str(name), "value": value_view(change)}
              for name, change in dec.items()]
    return section("decomposition", "Error decomposition", "decomposition.html.j2", blocks=blocks)


def _toys(report: Mapping[str, Any]) -> list[Mapping[str, Any]] | None:
    toys = report.get("toys")
    if not isinstance(toys, list) or not toys or not all(isinstance(t, Mapping) for t in toys):
        return None
    return toys


def toys_answer(report: Mapping[str, Any]) -> list[Sentence]:
    """How many toy systems the decomposition got right (closed-form agreement, mechanism)."""
    toys = _toys(report)
    if toys is None:
        return []
    n_dom = sum(bool(t.get("dominant_correct")) for t in toys)
    n_agree = sum(bool(t.get("all_agree")) for t in toys)
    out = [[f"Decomposition checked on {len(toys)} toy systems: every estimate agrees with its "
            "closed form in ", _em("b", f"{n_agree}/{len(toys)}"),
            " of them; the engine names the right mechanism in ", _em("b", f"{n_dom}/{len(toys)}"), "."]]
    for t in toys:
        if not t.get("dominant_correct"):
            out.append([f"{t.get('name')}: expected the {t.get('mechanism')} term to dominate, "
                        f"the engine named {t.get('dominant_term')}."])
    return out


def _toy_view(toy: Mapping[str, Any]) -> dict[str, Any]:
    """One toy system: its mechanism, what the engine named, closed forms against estimates."""
    rows = [{"term": term, "side": side, "closed_form": cell_view(p.get("closed_form"), signed=side == "delta"),
             "estimate": cell_view(p.get("estimate"), signed=side == "delta"), "agrees": bool(p.get("agrees"))}
            for term, sides in (toy.get("terms") or {}).items()
            for side, p in (sides or {}).items() if isinstance(p, Mapping)]
    rest = {k: v for k, v in toy.items() if k not in (
        "name", "mechanism", "description", "sentence", "terms", "dominant_term",
        "dominant_correct", "self_defeating", "all_agree")}
    return {"name": str(toy.get("name", "toy")), "mechanism": str(toy.get("mechanism")),
            "description": toy.get("description"), "sentence": toy.get("sentence"),
            "dominant_term": str(toy.get("dominant_term")), "dominant_ok": bool(toy.get("dominant_correct")),
            "self_defeating": "yes" if toy.get("self_defeating") else "no",
            "all_agree": "yes" if toy.get("all_agree") else "no", "rows": rows, "details": value_view(rest)}


def toys_section(report: Mapping[str, Any], ctx: Context) -> Section | None:
    """Decomposition checked against closed forms on toy systems (``toys``)."""
    toys = _toys(report)
    if toys is None:
        return None
    ctx.claim("toys", "all_agree", "all_dominant_correct", "criterion")
    return section("toys", "Decomposition against closed forms", "toys.html.j2",
                   criterion=report.get("criterion"),
                   figures=ctx.figures_matching(lambda n: "decomposition" in n,
                                                "Estimated terms (bars) against closed forms (ticks)"),
                   toys=[_toy_view(t) for t in toys])


# -- sweeps and dataset checks --------------------------------------------------------------

def _sweep_jobs(report: Mapping[str, Any]) -> list[Mapping[str, Any]] | None:
    jobs = report.get("jobs")
    if not isinstance(jobs, list) or "failures" not in report:
        return None
    return [j for j in jobs if isinstance(j, Mapping)]


def _overrides(job: Mapping[str, Any]) -> list[str]:
    """A job's Hydra overrides, as the sweep summary lists them."""
    found = job.get("overrides") or []
    return [str(o) for o in found] if isinstance(found, list) else [str(found)]


def sweep_answer(report: Mapping[str, Any]) -> list[Sentence]:
    """How many jobs ran and failed, and which found a self-defeating improvement."""
    jobs = _sweep_jobs(report)
    if jobs is None:
        return []
    out = [["Sweep of ", _em("b", len(report["jobs"])), f" jobs: {len(report.get('failures') or [])} failed."]]
    _, varying = split_overrides([_overrides(j) for j in jobs])
    flagged = [(j, v) for j, v in zip(jobs, varying) if j.get("self_defeating")]
    if flagged:
        out.append([f"Self-defeating in {len(flagged)} of them: " + "; ".join(
            f"{' '.join(v) or j.get('job')}: {', '.join(j['self_defeating'])}" for j, v in flagged) + "."])
    return out


def _job_row(job: Mapping[str, Any], own: list[str], nodes: list[str]) -> dict[str, Any]:
    """A job of a sweep: its own overrides, status, each node's delta (interval, verdict)."""
    cells = [{"delta": fmt_signed(job[f"{n}.delta"]),
              "ci": fmt_interval(job[f"{n}.ci"]) if f"{n}.ci" in job else None,
              "verdict": job.get(f"{n}.verdict")} if f"{n}.delta" in job else None for n in nodes]
    return {"job": str(job.get("job")), "overrides": " ".join(own), "status": str(job.get("status")),
            "failed": job.get("status") != "ok", "cells": cells,
            "self_defeating": ", ".join(job.get("self_defeating") or [])}


def sweep_section(report: Mapping[str, Any], ctx: Context) -> Section | None:
    """A sweep summary (``jobs``, ``failures``): one row per job, failed jobs with their errors.

    Each job shows only the overrides that tell it apart; those common to all are said once.
    """
    jobs = _sweep_jobs(report)
    if jobs is None:
        return None
    ctx.claim("jobs", "failures", "sweep_dir", "table", "common_overrides")
    common, varying = split_overrides([_overrides(j) for j in jobs])
    nodes = list(dict.fromkeys(k[:-6] for j in jobs for k in j if k.endswith(".delta")))
    failures = report.get("failures") or []
    return section("sweep", "Sweep summary", "sweep.html.j2", sweep_dir=str(report.get("sweep_dir", "")),
                   common=" ".join(common), columns=[f"{n} Δ" for n in nodes],
                   rows=[_job_row(j, own, nodes) for j, own in zip(jobs, varying)],
                   figure=ctx.figure("summary.png", "Paired delta per job and node (95% interval, "
                                                    "coloured by verdict)"),
                   failures=value_view(failures) if failures else None)


def dataset_answer(report: Mapping[str, Any]) -> list[Sentence]:
    """How many frames were checked and how many problems were found."""
    if "problems" not in report or "counts" not in report:
        return []
    return [["Checked ", _em("b", report.get("n_frames", "?")), " frames under ",
             _em("code", report.get("root", "")), f": {report.get('n_valid', '?')} valid, ",
             _em("b", len(report.get("problems") or [])), " problems."]]


def dataset_section(report: Mapping[str, Any], ctx: Context) -> Section | None:
    """Dataset checks (``problems``, ``counts``): what was counted and every problem found."""
    if "problems" not in report or "counts" not in report:
        return None
    ctx.claim("problems", "counts", "n_frames", "n_valid", "n_problems", "root", "image_sizes",
              "valid_ids")
    problems = report.get("problems") or []
    ids = report.get("valid_ids") or []
    return section("dataset", "Dataset check", "dataset.html.j2", counts=value_view(report.get("counts")),
                   image_sizes=value_view(report["image_sizes"]) if report.get("image_sizes") else None,
                   problems=records_view(problems) if problems else None,
                   n_ids=len(ids), ids=", ".join(map(str, ids[:2000])))


# -- the stress test ------------------------------------------------------------------------

def _ratio(ratio: Any) -> dict[str, str] | None:
    """An underspecification ratio and its shade (1 = no extra spread under stress), or None."""
    if not isinstance(ratio, (int, float)) or not math.isfinite(ratio):
        return None
    alpha = max(0.0, min(1.0, (ratio - 1.0) / 3.0))
    return {"text": f"{fmt_number(ratio, 3)}×", "shade": f"{0.45 * alpha:.2f}"}


def _stress(report: Mapping[str, Any]) -> Mapping[str, Any] | None:
    under = report.get("underspecification")
    if isinstance(under, Mapping) and under and all(isinstance(u, Mapping) and "iid_sd" in u
                                                    for u in under.values()):
        return under
    return None


def stress_answer(report: Mapping[str, Any]) -> list[Sentence]:
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
        out.append([_em("b", name), f" ({metric}): seeds differ by sd {fmt_number(u.get('iid_sd'), 3)} "
                    "on i.i.d. test data; under stress their spread grows up to ",
                    _em("b", f"{fmt_number(ratios[worst], 3)}×"), f" ({worst})."])
    return out


def stress_section(report: Mapping[str, Any], ctx: Context) -> Section | None:
    """The stress test: underspecification ratios per node, corruption and subpopulation."""
    under = _stress(report)
    if under is None:
        return None
    settings_keys = ("corruptions", "severities", "skipped_corruptions", "corruption_seed", "images",
                     "pairs", "system_outputs")
    ctx.claim("underspecification", "rank_correlation", "corruption_metrics", "subpopulations",
              *settings_keys)
    nodes = report.get("nodes") if isinstance(report.get("nodes"), Mapping) else {}
    if nodes and all(isinstance(r, Mapping) and "iid_sd" in r for r in nodes.values()):
        ctx.claim("nodes")
    families = list(dict.fromkeys(f for u in under.values() for f in (u.get("families") or {})))
    subpops = list(dict.fromkeys(p for u in under.values() for p in (u.get("subpopulations") or {})))
    rows = []
    for name, u in under.items():
        n = nodes.get(name) or {}
        rows.append({"name": name, "metric": str(n.get("metric", "")),
                     "iid_mean": fmt_number(n.get("iid_mean")) if n else None,
                     "iid_sd": fmt_number(u.get("iid_sd"), 2 if n else 4),
                     "ratios": [_ratio((u.get("families") or {}).get(f)) for f in families]
                     + [_ratio((u.get("subpopulations") or {}).get(p)) for p in subpops]})
    rank = report.get("rank_correlation") or {}
    per_node = []
    for name, u in under.items():
        corr = {c: v for c, v in (u.get("corruptions") or {}).items() if isinstance(v, Mapping)}
        if not u.get("corruptions"):
            continue
        per_node.append({"name": name, "severities": ", ".join(map(str, report.get("severities") or [])),
                         "rows": [{"corruption": c, "ratio": _ratio(v.get("ratio")),
                                   "by_severity": ", ".join(f"{fmt_number(x, 3)}×" if x is not None else "–"
                                                            for x in v.get("ratio_by_severity") or []),
                                   "mean_change": ", ".join(fmt_signed(x) for x in v.get("mean_change") or []),
                                   "rank": fmt_number(((rank.get(name) or {}).get(c) or {}).get("mean"), 3)}
                                  for c, v in corr.items()]})
    return section("stress", "Stress test (underspecification)", "stress.html.j2",
                   families=families, subpops=subpops, rows=rows, per_node=per_node,
                   figures=ctx.figures_matching(lambda n: n.startswith("stress"),
                                                "Metric per seed under each corruption and severity"),
                   settings=value_view({k: report[k] for k in settings_keys if k in report}),
                   per_seed=[(key, value_view(report[key], depth=2))
                             for key in ("corruption_metrics", "subpopulations") if key in report])


# -- analyses, anything else, failures ------------------------------------------------------

#: report keys of analyses that get a section of their own, with its title.
ANALYSIS_TITLES = {
    "ceiling": "Gate 1: the detectors on ground-truth depth (the instrument)",
    "gate": "Gate: the upstream on its objects' pixels, against SGBM and the oracle",
    "outcomes": "Declared outcomes",
    "paper": "The paper's claims",
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
        value = value_view(report[key], figures=ctx.figures)
        figs = ctx.figures_matching(lambda n, key=key: key in n.lower() or
                                    (key.endswith("s") and key[:-1] in n.lower()))
        out.append(section(key, title, "generic.html.j2", value=value, figures=figs))
    return out


def generic_section(report: Mapping[str, Any], ctx: Context) -> Section | None:
    """Every key no other section showed: scalars in one table, the rest nested, named text
    tables (``table``/``tables``: a ``.txt``/``.md``/``.csv`` file in the run dir) folded."""
    rest = {k: v for k, v in report.items()
            if k not in ctx.used_keys and k not in META_KEYS and k not in ("figures", "figure")}
    if not rest:
        return None
    ctx.claim(*rest)
    texts = []
    for key in ("table", "tables"):
        text = ctx.text_file(rest.get(key))
        if text is not None:
            texts.append({"name": rest.pop(key), "text": text})
    return section("results", "Results", "generic.html.j2",
                   value=value_view(rest, figures=ctx.figures) if rest else None, texts=texts)


def failed_section(report: Mapping[str, Any], ctx: Context) -> Section | None:
    """A failed run (``status: failed``): the error first, the traceback folded."""
    if report.get("status") != "failed":
        return None
    ctx.claim("error", "traceback")
    return section("failure", "This run failed", "failure.html.j2",
                   error=str(report.get("error", "unknown error")),
                   traceback=str(report["traceback"]) if report.get("traceback") else None)


def gate_answer(report: Mapping[str, Any]) -> list[Sentence]:
    """The case study's gate first: does the learned upstream earn its place (beat the classical
    baseline on the objects the detectors read)? Every detector verdict below depends on it."""
    out: list[Sentence] = []
    ceiling = report.get("ceiling")
    if isinstance(ceiling, Mapping) and ceiling.get("passed") is not None:
        cells = ", ".join(f"{det} {d['value']:.3f} (floor {d['floor']:g})"
                          for det, d in (ceiling.get("detectors") or {}).items())
        out.append([_em("b", "Ceiling gate passed:") if ceiling["passed"] else _em("flag", "Ceiling gate failed:"),
                    f" with ground-truth depth the detectors reach {cells}."])
    verdict = (report.get("gate") or {}).get("verdict") if isinstance(report.get("gate"), Mapping) else None
    if not isinstance(verdict, Mapping) or verdict.get("passed") is None:
        return out
    where = f"on object pixels, both classes, up to {verdict.get('up_to', 40):g} m"
    if report["gate"].get("nothing_to_test"):
        out.append([_em("flag", "Nothing to test:"), " on the objects, every per-bin interval of depth loss − "
                    "disparity loss covers zero."])
    if verdict["passed"]:
        return out + [[_em("b", "Gate passed:"),
                       f" the learned stereo beats {verdict.get('reference', 'SGBM')} {where} on every seed."]]
    failing = "; ".join(f"{name}: " + ", ".join(v.get("failing", []))
                        for name, v in (verdict.get("systems") or {}).items() if not v.get("passed"))
    return out + [[_em("flag", "Gate failed:"),
                   f" the learned stereo does not beat {verdict.get('reference', 'SGBM')} {where} ({failing}); "
                   "the detector verdicts below do not test the paper's mechanism."]]


def failed_answer(report: Mapping[str, Any]) -> list[Sentence]:
    """A failed run says so first."""
    if report.get("status") != "failed":
        return []
    return [[_em("flag", "The run failed:"), f" {report.get('error')}"]]


#: sentence-like keys an analysis may put in its report (top level or in its block).
SENTENCE_KEYS = ("headline", "sentence", "summary", "conclusion")


def sentences_answer(report: Mapping[str, Any]) -> list[Sentence]:
    """Sentences the report states itself: top-level ``headline``/``sentence``/``summary`` strings
    and those of each analysis block."""
    out = [[report[k]] for k in SENTENCE_KEYS if isinstance(report.get(k), str)]
    for key in ANALYSIS_TITLES:
        block = report.get(key)
        if isinstance(block, Mapping):
            out += [[f"{ANALYSIS_TITLES[key]}: {block[k]}"] for k in SENTENCE_KEYS
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


def flagged_answer(report: Mapping[str, Any], limit: int = 6) -> list[Sentence]:
    """Self-defeating findings stated anywhere in the report (``self_defeating: true`` beside a
    ``sentence``), e.g. one per toy or per knob value; the study's own flags are stated already."""
    out: list[Sentence] = []
    for key, value in report.items():
        if key in ("nodes", "decomposition", "self_defeating") or isinstance(value, (str, int, float)):
            continue
        for path, m in _walk(value, (key,), 5):
            if m.get("self_defeating") is True and isinstance(m.get("sentence"), str):
                out.append([_em("flag", "Self-defeating"), f" ({' › '.join(path)}): {m['sentence']}"])
    if len(out) > limit:
        out = out[:limit] + [[f"… and {len(out) - limit} more in the sections below."]]
    return out


# -- the page -------------------------------------------------------------------------------

#: answer builders: each returns the sentences it can state about a report (often none).
ANSWERS: list[Callable[[Mapping[str, Any]], list[Sentence]]] = [
    failed_answer, gate_answer, study_answer, toys_answer, stress_answer, sweep_answer, dataset_answer,
    flagged_answer, sentences_answer,
]


def answer(report: Mapping[str, Any]) -> list[Sentence]:
    """The answer of a run in a few sentences (text segments), from every builder in :data:`ANSWERS`."""
    return [line for build in ANSWERS for line in build(report)]


def answer_text(report: Mapping[str, Any]) -> list[str]:
    """:func:`answer` as plain text, for the terminal."""
    return [" ".join("".join(s if isinstance(s, str) else s["text"] for s in line).split())
            for line in answer(report)]


#: section builders in page order; each returns a section, a list of them, or None.
SECTIONS: list[Callable[[Mapping[str, Any], Context], Section | list[Section] | None]] = [
    failed_section, study_section, system_section, decomposition_section, toys_section,
    stress_section, sweep_section, dataset_section, analysis_sections, generic_section,
]


@functools.cache
def environment() -> Environment:
    """The templates, autoescaped (every report string is text, never markup), with the verdict
    colours the badges share with the figures."""
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.globals.update(verdict_colors=VERDICT_COLORS, dark_verdicts=DARK)
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
        if got is not None:
            sections.extend(got if isinstance(got, list) else [got])
    rest = [f for f in (ctx.figure(n) for n in list(ctx.figures)) if f is not None]
    if rest:
        sections.append(section("figures", "Figures", "generic.html.j2", figures=rest))
    raw = json.dumps(report, indent=1, default=str)
    experiment = report.get("experiment") or "run"
    return environment().get_template("report.html.j2").render(
        title=title or f"entangle · {experiment}", experiment=str(experiment),
        meta={k: value_view(report[k]) for k in META_KEYS if k in report and k != "experiment"},
        answer=answer(report), summary=list(summary or []),
        summary_open=not isinstance(report.get("nodes"), Mapping) or study_nodes(report) != report["nodes"],
        sections=sections, raw_json=raw if len(raw) <= MAX_EMBEDDED_JSON else None,
        raw_size=len(raw), generated=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"))


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
