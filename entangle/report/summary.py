"""The one-screen text summary printed at the end of every experiment (and its ``--help``).

:func:`summary_lines` states the answer (the same sentences as the top of ``report.html``),
the per-node verdicts of a study, the run's headline numbers and where the report is.
:func:`experiment_help` lists the experiments with the header comment of each config.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any, Iterable, Mapping

from entangle.report.format import fmt_interval, fmt_number, fmt_signed, is_scalar
from entangle.stats import IDENTICAL

#: the width summary lines are wrapped to.
WIDTH = 100
#: at most this many node rows and extra facts, so the summary fits on one screen.
MAX_NODES = 15
MAX_FACTS = 8
MAX_OWN = 20

_META = ("experiment", "status", "profile", "seeds", "split", "wall_time_s", "figure", "table")


def _mean(values: Any) -> float | None:
    vals = [float(v) for v in values or [] if v is not None and math.isfinite(float(v))]
    return sum(vals) / len(vals) if vals else None


def node_lines(report: Mapping[str, Any]) -> list[str]:
    """One line per compared node: metric, old → new, delta and interval, verdict."""
    from entangle.report.html import study_nodes

    nodes = study_nodes(report)
    if not nodes:
        return []
    flagged = {f.get("downstream") for f in report.get("self_defeating") or []}
    shown = list(nodes.items())[:MAX_NODES]
    width = max((len(str(n)) for n, _ in shown), default=4)
    metrics = {n: f"{r.get('metric')}{ {True: '↑', False: '↓'}.get(r.get('higher_is_better'), '')}"
               for n, r in shown if isinstance(r, Mapping)}
    mwidth = max((len(m) for m in metrics.values()), default=4)
    lines = []
    for name, r in shown:
        if not isinstance(r, Mapping) or "delta_mean" not in r:
            lines.append(f"  {name:<{width}}  {r.get('verdict') if isinstance(r, Mapping) else r}")
            continue
        verdict = (str(r.get("verdict")) + (f" ({IDENTICAL})" if r.get("identical") else "")
                   + ("  SELF-DEFEATING" if name in flagged else ""))
        mark = "*" if name == report.get("changed") else " "
        lines.append(f" {mark}{name:<{width}}  {metrics[name]:<{mwidth}} "
                     f"{fmt_number(_mean(r.get('old'))):>8} → {fmt_number(_mean(r.get('new'))):<8} "
                     f"Δ {fmt_signed(r.get('delta_mean')):>8} {fmt_interval(r.get('delta_ci')):<20} "
                     f"{verdict}")
    if len(nodes) > MAX_NODES:
        lines.append(f"  ... {len(nodes) - MAX_NODES} more nodes in the report")
    return lines


def fact_lines(report: Mapping[str, Any], skip: Iterable[str] = ()) -> list[str]:
    """Top-level scalar results (``n_scenes: 8``), the first :data:`MAX_FACTS` of them."""
    skip = set(skip) | set(_META)
    facts = [(k, v) for k, v in report.items() if k not in skip and is_scalar(v) and v is not None
             and not (isinstance(v, str) and len(v) > 80)]
    out = [f"  {k}: {fmt_number(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v}"
           for k, v in facts[:MAX_FACTS]]
    if len(facts) > MAX_FACTS:
        out.append(f"  ... {len(facts) - MAX_FACTS} more in the report")
    return out


def summary_lines(report: Mapping[str, Any], *, html: Path | str | None = None,
                  json_path: Path | str | None = None, own: Iterable[str] | None = None) -> list[str]:
    """The end-of-run summary: header, the answer, node verdicts, headline numbers, report paths.

    ``own`` is the experiment's own summary (its task module's ``summary_lines``); it stands in
    for the answer where the report has no sentences the renderer knows how to state.
    """
    from entangle.report.html import answer_text

    name = report.get("experiment", "run")
    status = report.get("status", "done")
    head = f"── entangle · {name} · {status}"
    if isinstance(report.get("wall_time_s"), (int, float)):
        head += f" in {report['wall_time_s']:.1f} s"
    lines = [head + " " + "─" * max(3, WIDTH - len(head) - 1)]
    if report.get("seeds"):
        seeds = report["seeds"]
        lines.append(f"  seeds: {', '.join(map(str, seeds))}" if isinstance(seeds, list) else f"  seeds: {seeds}")
    sentences = answer_text(report)
    for sentence in sentences:
        lines += textwrap.wrap(sentence, WIDTH, initial_indent="  ", subsequent_indent="    ")
    from entangle.report.html import study_nodes

    own = list(own or [])
    plain_study = isinstance(report.get("nodes"), Mapping) and study_nodes(report) == report["nodes"]
    if own and not plain_study:  # the experiment's own lines say more than a per-node table
        lines += ["  " + line for line in own[:MAX_OWN]]
        if len(own) > MAX_OWN:
            lines.append(f"  ... {len(own) - MAX_OWN} more lines in the report")
    else:
        nodes = node_lines(report)
        if nodes:
            lines.append("  per node (* changed):")
            lines += nodes
    lines += fact_lines(report, skip=("changed", "test"))
    store = report.get("store")
    if isinstance(store, Mapping) and "hits" in store and "misses" in store:
        lines.append(f"  store: {store['hits']} fits reused, {store['misses']} computed")
    if html is not None:
        lines.append(f"  report: {html}")
    if json_path is not None:
        lines.append(f"  data:   {json_path}")
    lines.append("─" * WIDTH)
    return lines


# -- help -----------------------------------------------------------------------------------

def header_comment(path: Path) -> str:
    """The comment block at the top of a config file (after ``# @package``), as plain text."""
    lines = []
    for raw in Path(path).read_text().splitlines():
        line = raw.strip()
        if line.startswith("# @package"):
            continue
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return "\n".join(lines).strip()


def experiments(config_dirs: Iterable[Path | str]) -> dict[str, tuple[Path, str]]:
    """Every ``experiment/*.yaml`` under the config dirs: name -> (file, header comment).

    A later dir shadows an earlier one's experiment of the same name, as Hydra's search path does
    for ``--config-dir``.
    """
    found: dict[str, tuple[Path, str]] = {}
    for d in config_dirs:
        folder = Path(d) / "experiment"
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.yaml")):
            found[path.stem] = (path, header_comment(path))
    return dict(sorted(found.items()))


USAGE = """\
entangle: change one model of a machine-learning system, retrain everything downstream over
seeds, and see which nodes get better, which get worse (self-defeating improvements), and why.

Usage:
  python -m entangle experiment=NAME [profile=quick|default|paper] [seeds=[0,1,2]] [key=value ...]
  python -m entangle experiment=NAME --help       that experiment's description and full config
  python -m entangle --config-dir DIR experiment=NAME
                                                  your own experiments/pipelines (docs/custom_pipeline.md)
  python -m entangle --multirun experiment=NAME key=a,b,c    a sweep (then experiment=summarize)
  python -m entangle store --help                 inspect and clean the artifact store
  python -m entangle --hydra-help                 Hydra's own options

Every run writes report.json, report.html (open it in a browser) and its figures into the run dir
(hydra.run.dir=DIR to choose it); fitted models go to the store (store.root=DIR).
Progress bars show on a terminal; set ENTANGLE_PROGRESS=0 to silence them.
"""


def experiment_help(config_dirs: Iterable[Path | str], width: int = WIDTH, max_lines: int = 4) -> str:
    """``entangle --help``: usage, then every experiment with what its config says it does.

    Each description is cut at ``max_lines`` lines; ``experiment=NAME --help`` shows it all.
    """
    found = experiments(config_dirs)
    out = [USAGE, f"Experiments ({len(found)}; experiment=NAME --help for the full description):"]
    pad = max((len(n) for n in found), default=10) + 4
    for name, (_, text) in found.items():
        lines = _describe(text or "(no header comment)", width - pad)
        if len(lines) > max_lines:
            lines = lines[:max_lines - 1] + [lines[max_lines - 1].rstrip(".,;:") + " …"]
        out.append(f"  {name:<{pad - 2}}{lines[0]}")
        out += [" " * pad + w for w in lines[1:]]
    return "\n".join(out) + "\n"


def _describe(text: str, width: int) -> list[str]:
    """Prose re-wrapped to ``width``; command lines (``python -m entangle ...``) kept as they are."""
    out: list[str] = []
    prose: list[str] = []
    for line in text.splitlines():
        if line.lstrip().startswith(("python ", "entangle ")):
            out += textwrap.wrap(" ".join(prose), width)
            prose = []
            out.append("  " + line.strip())
        else:
            prose.append(line.strip())
    out += textwrap.wrap(" ".join(prose), width)
    return out or [""]
