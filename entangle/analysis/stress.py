"""Underspecification stress tests: do seeds that look equal on i.i.d. data spread under stress?

D'Amour et al. (2020) train a family of models that differ only in their seed; equal on the
i.i.d. test set, they spread widely on corrupted images (ImageNet-C) and on shifted
subpopulations. Here the family is a system over seeds: every fitted run (from the store) is
re-run with corrupted source images through :meth:`~entangle.executor.Run.predict_with` —
nothing is retrained — and scored on subpopulations carved from per-sample attributes (far
objects, low contrast, night, occluded, ...).

Reported per node (and so per system output): the metric per corruption, severity and seed;
the **underspecification ratio**, the seed-to-seed standard deviation under stress over the
one on i.i.d. data (per severity, per corruption as the mean over severities, per family); and
the Spearman rank correlation of the seeds between i.i.d. and stress (is the best seed on the
test set still the best under stress?).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from entangle.analysis import corruptions as C
from entangle.analysis.stability import node_attributes, node_targets, source_attributes
from entangle.node import take
from entangle.study import ConfigError
from entangle.system import System, parse_ref

log = logging.getLogger(__name__)

#: every corruption, in ImageNet-C's family order, then the stereo one.
DEFAULT_CORRUPTIONS = tuple(C.CORRUPTIONS)


class StressError(ConfigError):
    """A stress option is wrong (unknown image output, bad subpopulation, too few seeds)."""


@dataclass
class StressResult:
    """The JSON-able ``report`` and the runs behind it."""

    report: dict[str, Any]
    runs: dict[int, Any] = field(default_factory=dict)


# -- subpopulations --------------------------------------------------------------------------

def subpopulation_mask(attributes: Mapping[str, np.ndarray], spec: Mapping[str, Any], where: str) -> np.ndarray:
    """Boolean mask of one subpopulation: ``{attribute, quantile: [lo, hi]}`` (quantiles of the
    attribute on this split), ``{attribute, range: [lo, hi]}`` (values) or ``{attribute, values: [...]}``."""
    spec = dict(spec)
    attr = spec.get("attribute")
    if attr is None:
        raise StressError(f"{where}: missing field 'attribute'")
    if attr not in attributes:
        raise StressError(f"{where}.attribute: unknown attribute {attr!r} (known: {sorted(attributes)})")
    unknown = set(spec) - {"attribute", "quantile", "range", "values"}
    if unknown:
        raise StressError(f"{where}: unknown field(s) {sorted(unknown)} (expected attribute and one of "
                          "quantile, range, values)")
    chosen = [k for k in ("quantile", "range", "values") if k in spec]
    if len(chosen) != 1:
        raise StressError(f"{where}: give exactly one of quantile, range, values (got {chosen})")
    v = np.asarray(attributes[attr])
    how = chosen[0]
    if how == "values":
        return np.isin(v, list(spec["values"]))
    bounds = list(spec[how])
    if len(bounds) != 2 or bounds[0] > bounds[1]:
        raise StressError(f"{where}.{how}: expected [low, high] with low <= high, got {bounds}")
    if how == "quantile" and not 0 <= bounds[0] <= bounds[1] <= 1:
        raise StressError(f"{where}.quantile: bounds must lie in [0, 1], got {bounds}")
    lo, hi = (np.nanquantile(v, bounds) if how == "quantile" else bounds)  # NaN: unknown, never in
    return (v >= lo) & (v <= hi)


def subset_metrics(run: Any, name: str, mask: np.ndarray, split: str,
                   _cache: dict | None = None) -> dict[str, float]:
    """A node's metrics on the samples (or items) selected by ``mask``.

    A mask over the split's samples rescores the node on them (``metric``); a mask over the
    node's per-sample losses (e.g. objects of a detector) gives their mean loss (``mean_loss``).
    ``_cache`` (a dict) keeps the node's loaded values between calls on the same run.
    """
    key = (id(run), name, split)
    if _cache is not None and key in _cache:
        preds, targets, loss, node = _cache[key]
    else:
        preds = run.values(name, split)
        targets = node_targets(run, name, split)
        loss = np.asarray(run.losses(name, split))
        node = run.fitted(name)
        if _cache is not None:
            _cache[key] = (preds, targets, loss, node)
    n_samples = len(next(iter(preds.values())))
    out: dict[str, float] = {}
    if len(mask) == n_samples:
        idx = np.flatnonzero(mask)
        sub_p = {k: take(v, idx) for k, v in preds.items()}
        sub_t = {k: take(v, idx) for k, v in targets.items()}
        out.update({k: float(v) for k, v in node.score(sub_p, sub_t).items()})
        if len(loss) == n_samples:
            out["mean_loss"] = float(np.mean(loss[idx])) if len(idx) else float("nan")
    elif len(mask) == len(loss):
        out["mean_loss"] = float(np.mean(loss[mask])) if mask.any() else float("nan")
    else:
        raise StressError(f"a subpopulation mask of {len(mask)} entries fits neither the {n_samples} "
                          f"samples nor the {len(loss)} per-sample losses of node {name!r}")
    return out


# -- statistics ------------------------------------------------------------------------------

def _sd(values: Sequence[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.std(ddof=1)) if len(v) >= 2 else float("nan")


def _ratio(sd: float, sd_iid: float) -> float | None:
    """``sd / sd_iid``; None when the i.i.d. spread is zero (deterministic nodes) or undefined."""
    if not np.isfinite(sd) or not np.isfinite(sd_iid) or sd_iid <= 1e-12:
        return None
    return sd / sd_iid


def _spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    from scipy.stats import spearmanr
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return None
    return float(spearmanr(a[ok], b[ok]).statistic)


def _digest(value: Any) -> str:
    a = np.ascontiguousarray(value)
    return hashlib.sha256(a.tobytes() + str((a.dtype, a.shape)).encode()).hexdigest()


# -- the stress test -------------------------------------------------------------------------

def _check_refs(system: System, refs: Sequence[str], option: str) -> list[tuple[str, str]]:
    out = []
    for ref in refs:
        try:
            node, output = parse_ref(str(ref))
        except ValueError as err:
            raise StressError(f"option {option!r}: {err}") from err
        if node not in system.specs:
            raise StressError(f"option {option!r}: {ref!r} names no node {node!r} (nodes: {sorted(system.specs)})")
        kinds = system.specs[node].node.output_kinds
        if output not in kinds:
            raise StressError(f"option {option!r}: node {node!r} has no output {output!r} (it has {sorted(kinds)})")
        out.append((node, output))
    return out


def stress(study: Any, *, images: Sequence[str] = (), pairs: Sequence[Sequence[str]] = (),
           corruptions: Sequence[str] = DEFAULT_CORRUPTIONS, severities: Sequence[int] = C.SEVERITIES,
           subpopulations: Mapping[str, Mapping[str, Any]] | None = None,
           attributes: Callable[..., Mapping[str, np.ndarray]] | str | None = None,
           split: str | None = None, corruption_seed: int = 0, matched_draws: int = 20,
           which: str = "old") -> StressResult:
    """The analysis: metrics of every model node of the study's system ``which`` under
    corruptions and subpopulation shifts, per seed (the fitted runs are only re-run).

    Parameters
    ----------
    images : ``"node.output"`` image outputs corrupted one by one (e.g. ``"data.image"``).
    pairs : ``["node.left", "node.right"]`` stereo pairs corrupted together (identical where
        physical, independent sensor noise, right-only ``stereo_mismatch``).
    corruptions, severities : names from :data:`~entangle.analysis.corruptions.CORRUPTIONS`
        and severities 1–5. A stereo-only corruption without ``pairs`` is skipped (and listed).
    subpopulations : name -> ``{attribute, quantile | range | values}`` over per-item attributes;
        a node whose items lack the attribute (see :func:`~entangle.analysis.stability.node_attributes`)
        gets ``None`` for it; a mask over a node's objects rather than samples is scored by the
        mean per-object loss (``quantity``).
    attributes : the attribute function (or its dotted path) of the sources' outputs; default:
        the sources' numeric columns (see :func:`~entangle.analysis.stability.source_attributes`).
    corruption_seed : fixes the random draws of the corruptions (the same for every model seed).
    matched_draws : random i.i.d. subsets of each subpopulation's size; a subpopulation's ratio
        is its seed spread over theirs (the full test set's spread would credit mere size).
    """
    system, seeds = study.systems[which], list(study.seeds)
    if len(seeds) < 2:
        raise StressError(f"a stress test compares seeds: it needs at least 2, got {seeds} (option 'seeds')")
    corruptions = C.check_names(corruptions, "corruptions")
    severities = [C.check_severity(s, "severities") for s in severities]
    image_refs = _check_refs(system, images, "images")
    pair_refs = []
    for p in pairs:
        if len(p) != 2:
            raise StressError(f"option 'pairs': each pair is [left, right], got {list(p)}")
        pair_refs.append(tuple(_check_refs(system, p, "pairs")))
    if corruptions and not image_refs and not pair_refs:
        raise StressError("corruptions were asked for but no image outputs are given (options 'images', "
                          "'pairs'); set corruptions=[] to run subpopulation shifts only")
    split = split or system.eval_split
    runs = study.runs(which)
    models = system.models()
    outputs = [n for n in models if system.specs[n].output]
    skipped = [c for c in corruptions if C.CORRUPTIONS[c].stereo_only and not pair_refs]
    active = [c for c in corruptions if c not in skipped]
    for c in skipped:
        log.info("corruption %r needs a stereo pair (option 'pairs'): skipped", c)

    iid = {n: [runs[s].metrics(n, split)[system.specs[n].node.metric] for s in seeds] for n in models}
    cor: dict[str, dict[int, dict[str, list[float]]]] = {c: {sv: {n: [] for n in models} for sv in severities}
                                                         for c in active}
    cache: dict[tuple, Any] = {}

    def corrupted(run, c: str, sv: int) -> dict[tuple[str, str], Any]:
        over: dict[tuple[str, str], Any] = {}
        if not C.CORRUPTIONS[c].stereo_only:
            for ref in image_refs:
                value = run.values(ref[0], split)[ref[1]]
                key = (ref, c, sv, _digest(value))
                if key not in cache:
                    cache[key] = C.corrupt(value, c, sv, seed=corruption_seed)
                over[ref] = cache[key]
        for left, right in pair_refs:
            lv, rv = run.values(left[0], split)[left[1]], run.values(right[0], split)[right[1]]
            key = (left, right, c, sv, _digest(lv), _digest(rv))
            if key not in cache:
                cache[key] = C.corrupt_pair(lv, rv, c, sv, seed=corruption_seed)
            over[left], over[right] = cache[key]
        return over

    from entangle.progress import progress
    steps = [(s, c, sv) for s in seeds for c in active for sv in severities]
    for s, c, sv in progress(steps, desc="stress", leave=False):
        run = runs[s]
        res = run.predict_with(corrupted(run, c, sv), split)
        for n in models:
            metric = system.specs[n].node.metric
            cor[c][sv][n].append(res[n]["metrics"][metric] if n in res else runs[s].metrics(n, split)[metric])

    # subpopulations, resolved per node: a node's items may be samples or its own objects
    subs: dict[str, Any] = {}
    matched: dict[str, dict[str, list[list[float]]]] = {}
    for pname, pspec in (subpopulations or {}).items():
        subs[pname] = {"definition": dict(pspec), "quantity": {}, "n_items": {n: [] for n in models},
                       "nodes": {n: [] for n in models}}
        matched[pname] = {n: [[] for _ in range(matched_draws)] for n in models}
    rng = np.random.default_rng(corruption_seed)
    draws: dict[tuple, np.ndarray] = {}
    loaded: dict = {}
    for s in seeds if subs else []:
        attrs = source_attributes(runs[s], split, attributes)
        for pname, pspec in (subpopulations or {}).items():
            known: set[str] = set()
            for n in models:
                nattrs = node_attributes(attrs, n)
                known |= set(nattrs)
                if dict(pspec).get("attribute") not in nattrs:
                    continue  # not an attribute of this node's items: not applicable
                mask = subpopulation_mask(nattrs, pspec, f"subpopulations.{pname}")
                metric = system.specs[n].node.metric
                m = subset_metrics(runs[s], n, mask, split, loaded)
                quantity = metric if metric in m else "mean_loss"
                subs[pname]["quantity"][n] = quantity
                subs[pname]["n_items"][n].append(int(mask.sum()))
                subs[pname]["nodes"][n].append(m[quantity])
                # the same number of random i.i.d. items: a small subset's seed spread is larger
                # by its size alone, so the ratio is taken against size-matched random subsets
                for b in range(matched_draws):
                    key = (pname, n, b, len(mask), int(mask.sum()))
                    if key not in draws:
                        draws[key] = np.isin(np.arange(len(mask)),
                                             rng.choice(len(mask), int(mask.sum()), replace=False))
                    mb = subset_metrics(runs[s], n, draws[key], split, loaded)
                    matched[pname][n][b].append(mb[quantity])
            if not subs[pname]["quantity"]:
                raise StressError(f"subpopulations.{pname}.attribute: unknown attribute "
                                  f"{dict(pspec).get('attribute')!r} (known: {sorted(known)})")
    for entry in subs.values():
        for n in models:
            if not entry["nodes"][n]:
                entry["nodes"][n] = entry["n_items"][n] = None

    under: dict[str, Any] = {}
    ranks: dict[str, Any] = {}
    for n in models:
        sd_iid = _sd(iid[n])
        per_c: dict[str, Any] = {}
        fam: dict[str, list[float]] = {}
        rk: dict[str, Any] = {}
        for c in active:
            sds = [_sd(cor[c][sv][n]) for sv in severities]
            drops = [float(np.mean(cor[c][sv][n]) - np.mean(iid[n])) for sv in severities]
            mean_sd = float(np.nanmean(sds)) if np.any(np.isfinite(sds)) else float("nan")
            per_c[c] = {"sd": sds, "ratio": _ratio(mean_sd, sd_iid),
                        "ratio_by_severity": [_ratio(x, sd_iid) for x in sds], "mean_change": drops}
            fam.setdefault(C.CORRUPTIONS[c].family, []).extend(sds)
            by_sev = [_spearman(iid[n], cor[c][sv][n]) for sv in severities]
            vals = [v for v in by_sev if v is not None]
            rk[c] = {"by_severity": by_sev, "mean": float(np.mean(vals)) if vals else None}
        sub_ratio = {}
        for pname, entry in subs.items():
            vals = entry["nodes"][n]
            if vals is None:
                sub_ratio[pname] = None
                continue
            sds = [_sd(v) for v in matched[pname][n]]
            sd_matched = float(np.nanmean(sds)) if np.any(np.isfinite(sds)) else float("nan")
            entry.setdefault("iid_sd_matched", {})[n] = sd_matched
            sub_ratio[pname] = _ratio(_sd(vals), sd_matched)
            rk[f"subpopulation:{pname}"] = {"mean": _spearman(iid[n], vals)}
        under[n] = {"iid_sd": sd_iid, "corruptions": per_c,
                    "families": {f: _ratio(float(np.nanmean(v)), sd_iid) if np.any(np.isfinite(v)) else None
                                 for f, v in fam.items()},
                    "subpopulations": sub_ratio}
        ranks[n] = rk

    report = {
        "split": split, "seeds": seeds, "corruptions": active, "severities": severities,
        "skipped_corruptions": skipped, "corruption_seed": int(corruption_seed),
        "images": [f"{a}.{b}" for a, b in image_refs], "pairs": [[f"{l[0]}.{l[1]}", f"{r[0]}.{r[1]}"]
                                                               for l, r in pair_refs],
        "system_outputs": outputs,
        "nodes": {n: {"metric": system.specs[n].node.metric,
                      "higher_is_better": bool(system.specs[n].node.higher_is_better),
                      "iid": iid[n], "iid_mean": float(np.mean(iid[n])), "iid_sd": _sd(iid[n])}
                  for n in models},
        "corruption_metrics": {c: {"family": C.CORRUPTIONS[c].family,
                                   "severities": {str(sv): cor[c][sv] for sv in severities}} for c in active},
        "subpopulations": subs,
        "underspecification": under,
        "rank_correlation": ranks,
    }
    return StressResult(report, dict(runs))


def corruption_summary(report: Mapping[str, Any]) -> list[str]:
    """One line per node and corruption family: the underspecification ratio."""
    lines = []
    for n, u in report["underspecification"].items():
        fams = ", ".join(f"{f} {r:.2f}" if r is not None else f"{f} n/a" for f, r in u["families"].items())
        subs = ", ".join(f"{p} {r:.2f}" if r is not None else f"{p} n/a" for p, r in u["subpopulations"].items())
        lines.append(f"{n:<12} iid sd {u['iid_sd']:.4g}  ratio by family: {fams}"
                     + (f"  subpopulations: {subs}" if subs else ""))
    return lines
