"""Report values as plain data for the page's templates: numbers, intervals and any JSON value.

Numbers and intervals are formatted here as text (how many digits, which signs, a real minus
sign are decisions, shared with the terminal summary). Any JSON value becomes a *view*: a small
dict tree whose ``kind`` says which shape to draw (a key/value table, one table of like records,
nested collapsible blocks...), chosen by :func:`value_view` to be the most readable. Sections of
the report use it for keys they do not know, so a new key in some experiment's ``report.json``
degrades to a table instead of breaking the page. The markup lives in
``templates/macros.html.j2`` (macro ``value``); nothing here writes HTML.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

from entangle.report.colors import VERDICT_COLORS

#: rows shown per table before the rest is left to report.json.
MAX_ROWS = 200
#: items of a list of numbers shown inline before it is summarised.
MAX_INLINE = 12
#: columns of a table built from records before it falls back to nested blocks.
MAX_COLUMNS = 14

#: a view: ``{"kind": ..., ...}`` (see :func:`value_view`), or None where a cell stays empty.
View = dict[str, Any]


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


def figure_id(name: str) -> str:
    """A stable HTML id for a figure file name."""
    return "".join(c if c.isalnum() else "-" for c in name)


def split_overrides(jobs: Sequence[Sequence[str]]) -> tuple[list[str], list[list[str]]]:
    """The overrides of a sweep's jobs split into those every job shares (to state once) and,
    per job, those that tell it apart (to label it by), each in the job's own order.

    >>> split_overrides([["profile=quick", "alpha=0.1"], ["profile=quick", "alpha=1"]])
    (['profile=quick'], [['alpha=0.1'], ['alpha=1']])
    """
    lists = [[str(o) for o in job] for job in jobs]
    shared = set.intersection(*(set(job) for job in lists)) if lists else set()
    common = [o for o in dict.fromkeys(lists[0]) if o in shared] if lists else []
    return common, [[o for o in job if o not in shared] for job in lists]


def interval_view(value: Mapping[str, Any], *, signed: bool = False) -> View:
    """An estimate over seeds as ``mean [lo, hi]``, the per-seed values for a tooltip.

    ``signed`` shows signs, for differences.
    """
    seeds = value.get("per_seed")
    return {"kind": "interval",
            "mean": fmt_signed(value.get("mean")) if signed else fmt_number(value.get("mean")),
            "ci": fmt_interval(value.get("ci"), signed=signed),
            "title": ("per seed: " + ", ".join(fmt_number(v) for v in seeds)) if seeds else ""}


def glyph_view(mean: float | None, ci: Sequence[float | None] | None, verdict: str | None = None,
               *, width: int = 140, height: int = 18) -> View | None:
    """Where to draw a paired delta's glyph (zero line, 95% interval bar, mean dot), or None.

    The scale is the row's own (symmetric about zero), so the glyph shows whether the interval
    excludes zero and on which side, not magnitudes across rows.
    """
    if mean is None or not math.isfinite(mean):
        return None
    lo, hi = (ci if ci and len(ci) == 2 and None not in ci else (mean, mean))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo = hi = mean
    span = max(abs(lo), abs(hi), abs(mean)) * 1.15 or 1.0
    mid, half = width / 2, width / 2 - 5

    def x(v: float) -> str:
        return f"{mid + v / span * half:.1f}"

    return {"width": width, "height": height, "mid": mid, "y": height / 2, "lo": x(lo),
            "hi": x(hi), "mean": x(mean), "label": fmt_interval((lo, hi)),
            "color": VERDICT_COLORS.get(verdict, "#546e7a") if verdict else "#546e7a"}


def scalar_view(value: Any, figures: Mapping[str, str] | None = None) -> View:
    """One scalar: numbers formatted, booleans as yes/no, a figure's file name as a link to it."""
    if value is None:
        return {"kind": "muted", "text": "–"}
    if isinstance(value, bool):
        return {"kind": "text", "text": "yes" if value else "no"}
    if isinstance(value, (int, float)):
        return {"kind": "num", "text": fmt_number(value)}
    text = str(value)
    if figures and text in figures:
        return {"kind": "link", "text": text, "target": "fig-" + figure_id(text)}
    if "\n" in text or len(text) > 160:
        return {"kind": "pre", "text": text}
    return {"kind": "text", "text": text}


def cell_view(value: Any, *, signed: bool = False) -> View:
    """A table cell of a value that is often an estimate over seeds (signed for differences)."""
    return interval_view(value, signed=signed) if is_interval(value) else value_view(value)


def _inline_view(values: Sequence[Any]) -> View:
    """Scalars in a row; a long list cut, with its length (and range, for numbers) said."""
    if len(values) <= MAX_INLINE:
        return {"kind": "inline", "parts": [scalar_view(v) for v in values], "more": ""}
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    finite = [float(v) for v in nums if math.isfinite(v)] if len(nums) == len(values) else []
    stats = (f"; min {fmt_number(min(finite))}, mean {fmt_number(sum(finite) / len(finite))}, "
             f"max {fmt_number(max(finite))}") if finite else ""
    return {"kind": "inline", "parts": [scalar_view(v) for v in values[:MAX_INLINE - 2]],
            "more": f"{len(values)} values{stats}"}


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


def records_view(rows: Sequence[Mapping[str, Any]], *, index: Sequence[str] | None = None,
                 index_name: str = "", figures: Mapping[str, str] | None = None,
                 depth: int = 0) -> View:
    """A table with one row per record (union of keys as columns); long tables cut with a count."""
    cols = _record_columns(rows)
    return {"kind": "records", "columns": ([index_name] if index is not None else []) + cols,
            "index": index is not None, "more": max(0, len(rows) - MAX_ROWS),
            "rows": [{"head": index[i] if index is not None else None,
                      "cells": [value_view(r[c], figures=figures, depth=depth + 1) if c in r else None
                                for c in cols]}
                     for i, r in enumerate(rows[:MAX_ROWS])]}


def kv_view(entries: Mapping[str, Any], figures: Mapping[str, str] | None = None,
            depth: int = 0) -> View:
    """A two-column key/value table."""
    return {"kind": "kv", "rows": [(str(k), value_view(v, figures=figures, depth=depth + 1))
                                   for k, v in entries.items()]}


def details_view(summary: Any, body: View, *, opened: bool = False) -> View:
    """A collapsible block: ``summary`` (text, or rich text segments) folding ``body``."""
    return {"kind": "details", "summary": [summary] if isinstance(summary, str) else summary,
            "body": body, "open": opened}


def _split_records(value: Mapping[str, Mapping[str, Any]], figures: Mapping[str, str] | None,
                   depth: int) -> View | None:
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
    parts = [records_view([{k: rec[k] for k in compact if k in rec} for rec in value.values()],
                          index=[str(k) for k in value], figures=figures, depth=depth)]
    for name, rec in value.items():
        nested = {k: v for k, v in rec.items() if k not in compact}
        if nested:
            parts.append(details_view(f"{name}: {', '.join(map(str, nested))}",
                                      value_view(nested, figures=figures, depth=depth + 1)))
    return {"kind": "group", "parts": parts}


def _named_blocks(records: Sequence[Mapping[str, Any]], figures: Mapping[str, str] | None,
                  depth: int) -> View:
    """A list of named records (experiments, toys, regions): one titled block each."""
    parts = []
    for item in records[:MAX_ROWS]:
        rest = {k: v for k, v in item.items() if k not in ("name", "description")}
        title: list[Any] = [{"style": "b", "text": item["name"]}]
        if isinstance(item.get("description"), str):
            title += [" ", {"style": "muted", "text": f"— {item['description']}"}]
        parts.append(details_view(title, value_view(rest, figures=figures, depth=depth + 1),
                                  opened=True))
    return {"kind": "group", "parts": parts}


def value_view(value: Any, *, figures: Mapping[str, str] | None = None, depth: int = 0) -> View:
    """Any JSON value as a view, choosing the most readable shape (see the module docstring)."""
    if is_scalar(value):
        return scalar_view(value, figures)
    if is_interval(value):
        return interval_view(value)
    if isinstance(value, (list, tuple)):
        if not value:
            return {"kind": "muted", "text": "none"}
        if all(is_scalar(v) for v in value):
            return _inline_view(list(value))
        if _is_records(value):
            return records_view(list(value), figures=figures, depth=depth)
        if all(isinstance(v, Mapping) and isinstance(v.get("name"), str) for v in value):
            return _named_blocks(value, figures, depth)
        return {"kind": "list", "parts": [value_view(v, figures=figures, depth=depth + 1)
                                          for v in value[:MAX_ROWS]]}
    if isinstance(value, Mapping):
        if not value:
            return {"kind": "muted", "text": "empty"}
        vals = list(value.values())
        if all(is_compact(v) for v in vals):
            return kv_view(value, figures, depth)
        if len(vals) >= 2 and _is_records(vals):
            return records_view(vals, index=[str(k) for k in value], figures=figures, depth=depth)
        if len(vals) >= 2 and all(isinstance(v, Mapping) for v in vals):
            split = _split_records(value, figures, depth)
            if split is not None:
                return split
        parts = []
        scalars = {k: v for k, v in value.items() if is_compact(v)}
        if scalars:
            parts.append(kv_view(scalars, figures, depth))
        parts += [details_view(str(k), value_view(v, figures=figures, depth=depth + 1),
                               opened=depth < 2)
                  for k, v in value.items() if k not in scalars]
        return {"kind": "group", "parts": parts}
    return {"kind": "text", "text": repr(value)}
