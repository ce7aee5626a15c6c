"""Turning report values into HTML: numbers, intervals, verdict badges and generic tables.

The generic renderer (:func:`value_html`) shows any JSON value readably: a dict of scalars as a
key/value table, a list or dict of like records as one table, anything deeper as nested
collapsible blocks. Sections of the report use it for the keys they do not know, so a new key
in some experiment's ``report.json`` degrades to a table instead of breaking the page.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

from markupsafe import Markup, escape

from entangle.report.colors import DARK, VERDICT_COLORS

#: rows shown per table before the rest is left to report.json.
MAX_ROWS = 200
#: items of a list of numbers shown inline before it is summarised.
MAX_INLINE = 12
#: columns of a table built from records before it falls back to nested blocks.
MAX_COLUMNS = 14


def is_scalar(value: Any) -> bool:
    """Whether ``value`` is a JSON scalar (shown in one cell)."""
    return value is None or isinstance(value, (str, int, float, bool))


def is_interval(value: Any) -> bool:
    """Whether ``value`` is an estimate over seeds: ``{"mean", "ci", ...}`` (``sd``, ``per_seed``)."""
    return (isinstance(value, Mapping) and "mean" in value and "ci" in value
            and set(value) <= {"mean", "ci", "sd", "per_seed", "n"})


def is_compact(value: Any) -> bool:
    """Whether ``value`` fits in one table cell: a scalar, an interval or a short list of scalars."""
    return (is_scalar(value) or is_interval(value)
            or (isinstance(value, list) and len(value) <= MAX_INLINE and all(is_scalar(x) for x in value)))


def interval_html(value: Mapping[str, Any], *, signed: bool = False) -> Markup:
    """An estimate over seeds as ``mean [lo, hi]`` (the per-seed values in a tooltip).

    ``signed`` shows signs, for differences.
    """
    seeds = value.get("per_seed")
    title = ("per seed: " + ", ".join(fmt_number(v) for v in seeds)) if seeds else ""
    mean = fmt_signed(value.get("mean")) if signed else fmt_number(value.get("mean"))
    return Markup('<span class="num" title="{}">{} <span class="muted">{}</span></span>').format(
        title, mean, fmt_interval(value.get("ci"), signed=signed))


def fmt_number(value: float | int | None, digits: int = 4) -> str:
    """A number for a reader: ``digits`` significant digits, scientific only when very large/small."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 100_000 else str(value)
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
        return f"{value:.{max(1, digits - 1)}e}"
    return f"{value:.{digits}g}"


def fmt_signed(value: float | None, digits: int = 3) -> str:
    """A difference with its sign (``+0.12``, ``−3.4``); a real minus sign reads better."""
    if value is None or not math.isfinite(value):
        return "–"
    text = fmt_number(abs(value), digits)
    return ("+" if value >= 0 else "−") + text


def fmt_interval(ci: Sequence[float | None] | None, digits: int = 3, *, signed: bool = True) -> str:
    """``[lo, hi]`` (with signs for differences), or a dash when missing (one seed)."""
    if not ci or len(ci) != 2 or any(c is None or not math.isfinite(c) for c in ci):
        return "–"
    f = fmt_signed if signed else (lambda v, d: fmt_number(v, d))
    return f"[{f(ci[0], digits)}, {f(ci[1], digits)}]"


def verdict_badge(verdict: str | None) -> Markup:
    """A coloured label for a verdict (the same colours as the DAG)."""
    if not verdict:
        return Markup("")
    color = VERDICT_COLORS.get(verdict, "#cfd8dc")
    text = "white" if verdict in DARK else "#212121"
    return Markup('<span class="badge" style="background:{};color:{}">{}</span>').format(
        color, text, verdict)


def interval_svg(mean: float | None, ci: Sequence[float | None] | None, verdict: str | None = None,
                 *, width: int = 140, height: int = 18) -> Markup:
    """A small inline SVG of a paired delta: zero line, 95% interval bar and mean dot.

    The scale is the row's own (symmetric about zero), so the glyph shows whether the interval
    excludes zero and on which side, not magnitudes across rows.
    """
    if mean is None or not math.isfinite(mean):
        return Markup("")
    lo, hi = (ci if ci and len(ci) == 2 and None not in ci else (mean, mean))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo = hi = mean
    span = max(abs(lo), abs(hi), abs(mean)) * 1.15 or 1.0
    mid, half = width / 2, width / 2 - 5

    def x(v: float) -> float:
        return mid + v / span * half

    color = VERDICT_COLORS.get(verdict, "#546e7a") if verdict else "#546e7a"
    y = height / 2
    return Markup(
        '<svg class="ci" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
        'aria-label="interval {lab}">'
        '<line x1="{m}" y1="1" x2="{m}" y2="{h1}" stroke="#90a4ae" stroke-dasharray="2,2"/>'
        '<line x1="{a:.1f}" y1="{y}" x2="{b:.1f}" y2="{y}" stroke="{c}" stroke-width="3"/>'
        '<line x1="{a:.1f}" y1="{y0}" x2="{a:.1f}" y2="{y1}" stroke="{c}" stroke-width="1.5"/>'
        '<line x1="{b:.1f}" y1="{y0}" x2="{b:.1f}" y2="{y1}" stroke="{c}" stroke-width="1.5"/>'
        '<circle cx="{p:.1f}" cy="{y}" r="3.5" fill="{c}"/></svg>'
    ).format(w=width, h=height, h1=height - 1, m=mid, a=x(lo), b=x(hi), p=x(mean), y=y,
             y0=y - 4, y1=y + 4, c=color, lab=fmt_interval((lo, hi)))


def scalar_html(value: Any, figures: Mapping[str, str] | None = None) -> Markup:
    """One scalar: numbers formatted, booleans as yes/no, a figure's file name as the figure."""
    if value is None:
        return Markup('<span class="muted">–</span>')
    if isinstance(value, bool):
        return Markup("yes" if value else "no")
    if isinstance(value, (int, float)):
        return Markup('<span class="num">{}</span>').format(fmt_number(value))
    text = str(value)
    if figures and text in figures:
        return Markup('<a href="#fig-{}">{}</a>').format(figure_id(text), text)
    if "\n" in text or len(text) > 160:
        return Markup("<pre>{}</pre>").format(text)
    return escape(text)


def figure_id(name: str) -> str:
    """A stable HTML id for a figure file name."""
    return "".join(c if c.isalnum() else "-" for c in name)


def _numbers_inline(values: Sequence[Any]) -> Markup:
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(values) <= MAX_INLINE:
        return Markup(", ").join(scalar_html(v) for v in values)
    head = Markup(", ").join(scalar_html(v) for v in values[:MAX_INLINE - 2])
    if len(nums) == len(values):
        finite = [float(v) for v in nums if math.isfinite(v)]
        stats = (f"; min {fmt_number(min(finite))}, mean {fmt_number(sum(finite) / len(finite))}, "
                 f"max {fmt_number(max(finite))}") if finite else ""
    else:
        stats = ""
    return Markup('{}, … <span class="muted">({} values{})</span>').format(head, len(values), stats)


def _record_columns(records: Iterable[Mapping[str, Any]]) -> list[str]:
    cols: list[str] = []
    for r in records:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols


def _is_records(values: Sequence[Any]) -> bool:
    """Like dicts (a table's rows): every item a dict, few columns, mostly scalar cells."""
    if not values or not all(isinstance(v, Mapping) for v in values):
        return False
    cols = _record_columns(values)
    if len(cols) > MAX_COLUMNS:
        return False
    cells = [v for r in values for v in r.values()]
    return sum(is_compact(c) for c in cells) >= 0.8 * max(1, len(cells))


def records_table(rows: Sequence[Mapping[str, Any]], *, index: Sequence[str] | None = None,
                  index_name: str = "", figures: Mapping[str, str] | None = None,
                  depth: int = 0) -> Markup:
    """A table with one row per record (union of keys as columns), long tables cut with a note."""
    cols = _record_columns(rows)
    head = Markup("").join(Markup("<th>{}</th>").format(c) for c in cols)
    if index is not None:
        head = Markup("<th>{}</th>").format(index_name) + head
    body = []
    for i, r in enumerate(rows[:MAX_ROWS]):
        cells = [Markup('<td>{}</td>').format(value_html(r.get(c), figures=figures, depth=depth + 1))
                 if c in r else Markup("<td></td>") for c in cols]
        lead = Markup("<th>{}</th>").format(index[i]) if index is not None else Markup("")
        body.append(Markup("<tr>{}{}</tr>").format(lead, Markup("").join(cells)))
    more = ""
    if len(rows) > MAX_ROWS:
        more = Markup('<p class="muted">{} more rows in report.json</p>').format(len(rows) - MAX_ROWS)
    return Markup('<div class="scroll"><table class="data"><thead><tr>{}</tr></thead>'
                  '<tbody>{}</tbody></table></div>{}').format(head, Markup("").join(body), more)


def kv_table(items: Mapping[str, Any], figures: Mapping[str, str] | None = None,
             depth: int = 0) -> Markup:
    """A two-column key/value table."""
    rows = Markup("").join(
        Markup("<tr><th>{}</th><td>{}</td></tr>").format(k, value_html(v, figures=figures,
                                                                          depth=depth + 1))
        for k, v in items.items())
    return Markup('<table class="kv">{}</table>').format(rows)


def _split_records(value: Mapping[str, Mapping[str, Any]], figures: Mapping[str, str] | None,
                   depth: int) -> Markup | None:
    """Like records with some nested fields: the compact fields as one table, the rest folded."""
    counts: dict[str, int] = {}
    for rec in value.values():
        for k, v in rec.items():
            if is_compact(v):
                counts[k] = counts.get(k, 0) + 1
    # a column only when most records have it: unlike records are better shown apart
    compact = [k for k, c in counts.items() if c >= 0.6 * len(value)]
    if len(compact) < 3 or len(compact) > MAX_COLUMNS:
        return None
    table = records_table([{k: rec[k] for k in compact if k in rec} for rec in value.values()],
                          index=[str(k) for k in value], figures=figures, depth=depth)
    rest = []
    for name, rec in value.items():
        nested = {k: v for k, v in rec.items() if k not in compact}
        if nested:
            rest.append(Markup('<details><summary>{}: {}</summary><div class="nested">{}</div>'
                               '</details>').format(name, ", ".join(nested),
                                                    value_html(nested, figures=figures, depth=depth + 1)))
    return table + Markup("").join(rest)


def _named_blocks(items: Sequence[Mapping[str, Any]], figures: Mapping[str, str] | None,
                  depth: int) -> Markup:
    """A list of named records (experiments, toys, regions): one titled block each."""
    parts = []
    for item in items[:MAX_ROWS]:
        rest = {k: v for k, v in item.items() if k not in ("name", "description")}
        title = Markup("<b>{}</b>").format(item["name"])
        if isinstance(item.get("description"), str):
            title += Markup(' <span class="muted">— {}</span>').format(item["description"])
        parts.append(Markup('<details open><summary>{}</summary><div class="nested">{}</div></details>')
                     .format(title, value_html(rest, figures=figures, depth=depth + 1)))
    return Markup("").join(parts)


def value_html(value: Any, *, figures: Mapping[str, str] | None = None, depth: int = 0) -> Markup:
    """Any JSON value as HTML, choosing the most readable shape (see the module docstring)."""
    if is_scalar(value):
        return scalar_html(value, figures)
    if is_interval(value):
        return interval_html(value)
    if isinstance(value, (list, tuple)):
        if not value:
            return Markup('<span class="muted">none</span>')
        if all(is_scalar(v) for v in value):
            return _numbers_inline(list(value))
        if _is_records(value):
            return records_table(list(value), figures=figures, depth=depth)
        if all(isinstance(v, Mapping) and isinstance(v.get("name"), str) for v in value):
            return _named_blocks(value, figures, depth)
        items = Markup("").join(Markup("<li>{}</li>").format(value_html(v, figures=figures,
                                                                        depth=depth + 1))
                                for v in value[:MAX_ROWS])
        return Markup('<ol class="items">{}</ol>').format(items)
    if isinstance(value, Mapping):
        if not value:
            return Markup('<span class="muted">empty</span>')
        vals = list(value.values())
        if all(is_compact(v) for v in vals):
            return kv_table(value, figures, depth)
        if len(vals) >= 2 and _is_records(vals):
            return records_table(vals, index=[str(k) for k in value], figures=figures, depth=depth)
        if len(vals) >= 2 and all(isinstance(v, Mapping) for v in vals):
            split = _split_records(value, figures, depth)
            if split is not None:
                return split
        parts = []
        scalars = {k: v for k, v in value.items() if is_compact(v)}
        if scalars:
            parts.append(kv_table(scalars, figures, depth))
        for k, v in value.items():
            if k in scalars:
                continue
            opened = " open" if depth < 2 else ""
            parts.append(Markup('<details{}><summary>{}</summary><div class="nested">{}</div>'
                                '</details>').format(Markup(opened), k,
                                                     value_html(v, figures=figures, depth=depth + 1)))
        return Markup("").join(parts)
    return escape(repr(value))
