"""The toy_decomposition experiment: the decomposition engine against closed-form truth.

Four linear-Gaussian toys (``conf/pipeline/toy_*.yaml``), one per mechanism; in each an upstream
change lowers the upstream's own loss and is self-defeating for the downstream through that
mechanism. Every toy runs as an improvement study with the decomposition attached, and every
estimated term is compared with its closed form (:mod:`entangle.data.toy_systems`), computed for
the upstream actually fitted at each seed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf

from entangle.compare import attach_explanations, improvement
from entangle.data.toy_systems import closed_form_values
from entangle.decompose import Estimators, decompose_change, terms_from_values
from entangle.stats import interval
from entangle.study import ConfigError, Study, executor_from_config, seeds_from_config, store_from_config
from entangle.system import System
from entangle.tasks import output_dir

log = logging.getLogger(__name__)

VALUE_KEYS = ("L*", "L*(u)", "L_H(u)", "L(v̂∘u)")


def apply_changes(pipeline: Mapping[str, Any], changes: Sequence[Mapping[str, Any]], where: str) -> System:
    """The system of ``pipeline`` with each ``{node, set}`` change merged onto that node's config."""
    pipe = OmegaConf.to_container(OmegaConf.create(dict(pipeline)), resolve=True)
    for i, change in enumerate(changes):
        node = change.get("node")
        if node not in pipe["nodes"]:
            raise ConfigError(f"{where}, changes[{i}].node: {node!r} is not a node "
                              f"(nodes: {sorted(pipe['nodes'])})")
        if change.get("set") is None:
            raise ConfigError(f"{where}, changes[{i}]: needs `set` (the node's fields to change)")
        merged = OmegaConf.merge(pipe["nodes"][node], dict(change["set"]))
        pipe["nodes"][node] = OmegaConf.to_container(merged, resolve=True)
    return System.from_config(pipe, where=f"{where} with changes")


def agrees(estimate: Mapping[str, Any], closed_form: float, rel: float = 0.1, floor: float = 0.01) -> bool:
    """Whether an estimate matches a closed form: inside the estimate's interval, or within
    ``max(rel·|closed form|, floor)`` of it."""
    lo, hi = estimate["ci"]
    inside = lo is not None and hi is not None and np.isfinite(lo) and lo <= closed_form <= hi
    return bool(inside or abs(estimate["mean"] - closed_form) <= max(rel * abs(closed_form), floor))


def _closed_forms(study: Study, system: System, downstream: str, oracle: Mapping[str, str],
                  upstreams: Sequence[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Per-seed closed-form values (for each seed's fitted upstreams) and their bookkeeping."""
    runs = study.fit(system, study.seeds)
    per_seed = [closed_form_values(runs[s], downstream, oracle=oracle, upstreams=upstreams)
                for s in study.seeds]
    keys = [k for k in per_seed[0] if k in VALUE_KEYS or k.startswith("L*(only ")]
    info = {"n": per_seed[0]["n"], "d": [v["d"] for v in per_seed], "exact": per_seed[0]["exact"]}
    return {k: np.array([v[k] for v in per_seed], dtype=np.float64) for k in keys}, info


def run_toy(name: str, toy: DictConfig, reference_cfg: Any, seeds_: list[int], store, executor: Any = None,
            confidence: float = 0.95) -> dict[str, Any]:
    """One toy: the improvement study, the decomposition of its downstream's change (every fit
    through the toy's study), and every term against its closed form."""
    from hydra.utils import instantiate

    where = f"toys.{name}"
    for key in ("mechanism", "downstream", "changes", "pipeline"):
        if toy.get(key) is None:
            raise ConfigError(f"{where}: missing field {key!r}")
    pipe = OmegaConf.to_container(toy.pipeline, resolve=True)
    old = System.from_config(pipe, where=f"pipeline for {where}")
    changes = OmegaConf.to_container(toy.changes, resolve=True)
    new = apply_changes(pipe, changes, where)
    changed = [c["node"] for c in changes]
    v = str(toy.downstream)
    oracle = OmegaConf.to_container(toy.oracle, resolve=True) if toy.get("oracle") is not None else {}
    est = Estimators(reference=instantiate(reference_cfg, _convert_="all"),
                     large_split=str(toy.get("large_split", "large")), oracle=oracle)
    study = Study(old, new=new, changed=changed, seeds=seeds_, store=store, executor=executor)
    compared = improvement(study, confidence=confidence)
    # decomposed whether flagged or not: every toy's terms are checked against their closed forms
    change = decompose_change(study.old, study.new, v, seeds_, store, changed=changed, estimators=est,
                              confidence=confidence, fit=study.fit)
    attach_explanations(compared, {v: change.report})
    ups = change.old.upstreams
    cf, info = {}, {}
    for side, system in (("old", study.old), ("new", study.new)):
        cf[side], info[side] = _closed_forms(study, system, v, oracle, ups)
    cf_terms = {k: terms_from_values(cf[k]) for k in cf}
    est_values = {"old": change.old.values, "new": change.new.values}
    est_terms = {"old": change.old.terms, "new": change.new.terms}
    # every term's delta is new level minus old level, as the engine's (decompose.change_deltas)
    cf_deltas = {"total": cf["new"]["L(v̂∘u)"] - cf["old"]["L(v̂∘u)"],
                 **{t: cf_terms["new"][t] - cf_terms["old"][t] for t in cf_terms["old"]}}

    def pair(estimate: np.ndarray, closed: np.ndarray) -> dict[str, Any]:
        e = interval(estimate, confidence)
        c = interval(closed, confidence)
        return {"closed_form": c, "estimate": e, "agrees": agrees(e, c["mean"])}

    terms = {}
    for t in est_terms["old"]:
        terms[t] = {side: pair(est_terms[side][t], cf_terms[side][t]) for side in ("old", "new")}
    for t, d in change.deltas.items():
        if t in cf_deltas:
            terms.setdefault(t, {})["delta"] = pair(d, cf_deltas[t])
    values = {k: {side: pair(est_values[side][k], cf[side][k]) for side in ("old", "new")}
              for k in cf["old"]}
    checks = [side["agrees"] for t in terms.values() for side in t.values()]
    checks += [side["agrees"] for val in values.values() for side in val.values()]
    rep = change.report
    return {
        "name": name,
        "mechanism": str(toy.mechanism),
        "description": str(toy.get("description", "")),
        "changed": changed,
        "downstream": v,
        "loss": rep["loss"],
        "closed_form_info": info,
        "terms": terms,
        "values": values,
        "self_defeating": any(f["downstream"] == v for f in compared["self_defeating"]),
        "study_flags": compared["self_defeating"],
        "study_verdicts": {n: r.get("verdict") for n, r in compared["nodes"].items()},
        "dominant": rep["dominant"],
        "dominant_term": rep["dominant_term"],
        "dominant_correct": rep["dominant"] == str(toy.mechanism),
        "sentence": rep["sentence"],
        "all_agree": bool(all(checks)),
        "warnings": rep["old"]["warnings"] + rep["new"]["warnings"],
        "store": {"decomposition": rep["store"]},
    }


def table_lines(toys: list[dict[str, Any]]) -> list[str]:
    """A text table: per toy and term, closed form vs estimate (old, new, delta) and agreement."""
    lines = [f"{'toy':<14}{'term':<22}{'side':<6}{'closed form':>12}{'estimate':>12}  {'95% interval':<22}ok"]
    for toy in toys:
        for t, sides in toy["terms"].items():
            for side, p in sides.items():
                e, c = p["estimate"], p["closed_form"]
                lo, hi = e["ci"]
                ci = f"[{lo:+.4f}, {hi:+.4f}]" if lo is not None and np.isfinite(lo) else "-"
                lines.append(f"{toy['name']:<14}{t:<22}{side:<6}{c['mean']:>12.4f}{e['mean']:>12.4f}  "
                             f"{ci:<22}{'yes' if p['agrees'] else 'NO'}")
        lines.append(f"{toy['name']:<14}dominant: {toy['dominant_term']} (expected {toy['mechanism']})"
                     f"  self-defeating: {toy['self_defeating']}")
    return lines


TERM_COLORS = {"L*": "#b0bec5", "upstream": "#1565c0", "approximation": "#ef6c00",
               "estimation": "#2e7d32", "compatibility": "#6a1b9a"}


def term_color(term: str, parts: Sequence[str] = ()) -> str:
    """The colour of a term in the stacked bars (per-upstream parts in shades of blue)."""
    if term.startswith("upstream:"):
        shades = ["#64b5f6", "#0d47a1", "#1e88e5", "#90caf9"]
        return shades[list(parts).index(term) % len(shades)] if term in parts else shades[0]
    return TERM_COLORS.get(term, "#9e9e9e")


def stack_terms(ax, x: float, items: Sequence[tuple[str, float]], parts: Sequence[str] = (),
                labelled: bool = True, width: float = 0.6) -> None:
    """Diverging stacked bar at ``x``: positive terms upward from 0, negative ones downward
    (hatched), and a black bar-wide tick at their sum."""
    up = down = 0.0
    for term, value in items:
        kwargs = {"color": term_color(term, parts), "width": width,
                  "label": term if labelled else None}
        if value >= 0:
            ax.bar(x, value, bottom=up, **kwargs)
            up += value
        else:
            ax.bar(x, value, bottom=down, hatch="//", edgecolor="white", **kwargs)
            down += value
    ax.hlines(up + down, x - width / 2, x + width / 2, colors="k", lw=2)


def terms_figure(toys: list[dict[str, Any]]):
    """Stacked bars of the terms, old vs new, per toy, with closed-form markers."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(toys), figsize=(3.3 * len(toys), 4.2), squeeze=False)
    for ax, toy in zip(axes[0], toys):
        parts = [t for t in toy["terms"] if t.startswith("upstream:")]
        stack = (parts + ["compatibility"] if parts else ["upstream"]) + ["approximation", "estimation"]
        for x, side in enumerate(("old", "new")):
            items = [("L*", toy["values"]["L*"][side]["estimate"]["mean"])]
            items += [(t, toy["terms"][t][side]["estimate"]["mean"]) for t in stack]
            stack_terms(ax, x, items, parts, labelled=x == 0)
            level = toy["values"]["L*"][side]["closed_form"]["mean"]
            ax.plot([x + 0.36], [level], marker="<", color="k", ms=5)   # closed-form levels
            for t in stack:
                level += toy["terms"][t][side]["closed_form"]["mean"]
                ax.plot([x + 0.36], [level], marker="<", color="k", ms=5)
        ax.set_xticks([0, 1], ["old", "new"])
        ax.set_title(f"{toy['name']}: dominant {toy['dominant_term']}\n"
                     f"{'self-defeating' if toy['self_defeating'] else 'not flagged'}", fontsize=9)
        ax.set_ylabel(f"downstream risk ({toy['loss']})", fontsize=8)
        ax.legend(fontsize=6, loc="upper left")
    fig.suptitle("error decomposition: estimated terms (bars; black bar: their sum) vs the closed-form "
                 "cumulative levels (◀)", fontsize=10)
    fig.tight_layout()
    return fig


def run(cfg: DictConfig) -> dict[str, Any]:
    """Experiment entry point: all toys over the seeds, report, table and figure."""
    import matplotlib.pyplot as plt

    seeds_ = seeds_from_config(cfg, minimum=2)
    store, executor = store_from_config(cfg), executor_from_config(cfg)
    if cfg.get("reference") is None:
        raise ConfigError("toy_decomposition needs a `reference` learner config (conf/node/reference_mlp.yaml)")
    reference_cfg = cfg.reference
    names = list(cfg.get("run_toys") or cfg.toys.keys())
    toys = []
    for name in names:
        if name not in cfg.toys:
            raise ConfigError(f"run_toys: no toy {name!r} (toys: {sorted(cfg.toys)})")
        log.info("toy %r (%s)", name, cfg.toys[name].mechanism)
        toys.append(run_toy(name, cfg.toys[name], reference_cfg, seeds_, store, executor))
    out = output_dir(cfg)
    fig = terms_figure(toys)
    fig.savefig(Path(out) / "toy_decomposition.png", dpi=110)
    plt.close(fig)
    lines = table_lines(toys)
    (Path(out) / "toy_decomposition.txt").write_text("\n".join(lines) + "\n")
    for line in lines:
        log.info(line)
    for toy in toys:
        log.info("%s: %s", toy["name"], toy["sentence"])
    return {
        "seeds": seeds_,
        "profile": str(cfg.get("profile")),
        "criterion": "an estimate agrees when its 95% t interval over seeds holds the closed form, or "
                     "it lies within max(10% of the closed form's magnitude, 0.01) of it",
        "toys": toys,
        "all_agree": all(t["all_agree"] for t in toys),
        "all_dominant_correct": all(t["dominant_correct"] for t in toys),
        "figures": ["toy_decomposition.png"],
        "table": "toy_decomposition.txt",
    }
