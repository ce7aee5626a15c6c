"""The paper_toys report: the figures in the paper's form and the results table (``RESULTS.md``).

Everything here reads the report dict :func:`entangle.tasks.paper_toys.run` builds (so a table
can be redrawn from a ``report.json``): the protocol beside the paper's, the premise of each
experiment first (:mod:`entangle.analysis.paper_premises`), then one row per change with its
verdicts, intervals and power, and a section per experiment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from entangle.stats import IDENTICAL, detectable_text

#: the paper's claim per experiment: the knob's direction of improvement and the named mechanism
PAPER = {
    "loss_function": {"mechanism": "upstream",
                      "claim": "more (noisy) training data lowers the regression upstream's squared "
                               "error, but its output averages the swapped 1/3 and 7/9 labels: the "
                               "four-digit classifier on it gets worse (upstream error)"},
    "data_distribution": {"mechanism": "upstream",
                          "claim": "more data for the coarse upstream makes it better on its own task, "
                                   "but its features lose what tells 1 from 7: the linear 1-vs-7 "
                                   "downstream gets worse (upstream error)"},
    "hypothesis_space": {"mechanism": "approximation",
                         "claim": "a deeper head makes the upstream better, but its features are no "
                                  "longer linearly separable: the linear downstream gets worse "
                                  "(approximation error)"},
    "entanglement": {"mechanism": "compatibility",
                     "claim": "cleaner labels make upstream 1 better alone, but its errors no longer "
                              "cancel upstream 2's: the {1,7}-vs-6 downstream gets worse "
                              "(upstream compatibility error)"},
}


# -- figures ------------------------------------------------------------------------------------
def sweep_figure(exp: Mapping[str, Any]):
    """The paper's form: the upstream's and the downstream's test loss against the knob (bands:
    ± one sd over seeds), and the decomposition's terms at every knob value."""
    import textwrap

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from entangle.tasks.toy_decomposition import stack_terms

    labels = exp["knob"]["labels"]
    x = np.arange(len(labels))
    knob_name = textwrap.fill(exp["knob"]["name"], 70)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.6))

    def band(axis, series, color, label, style="-", marker="o"):
        m = np.array([e["mean"] for e in series])
        s = np.array([0.0 if e["sd"] is None or not np.isfinite(e["sd"]) else e["sd"] for e in series])
        axis.plot(x, m, style, marker=marker, color=color, label=label)
        axis.fill_between(x, m - s, m + s, color=color, alpha=0.2, lw=0)

    colors = ["#1565c0", "#2e7d32", "#6a1b9a"]
    for i, (u, errs) in enumerate(exp["upstream"]["error"].items()):
        metric = exp["upstream"]["metric"][u]
        band(ax, errs, colors[i % 3], f"upstream {u}: {'error' if metric == 'accuracy' else metric}")
        knn = [m.get("knn_error") for m in exp["upstream"]["metrics"][u]]
        if all(k is not None for k in knn):
            band(ax, knn, colors[i % 3], f"upstream {u}: 1-NN error of its features", style="--", marker=".")
    ax.set_xticks(x, labels)
    ax.set_xlabel(knob_name, fontsize=7)
    ax.set_ylabel(f"upstream test loss (split {exp['upstream']['split']})")
    ax2 = ax.twinx()
    band(ax2, exp["downstream"]["error"], "#c62828", "downstream error", marker="s")
    ax2.set_ylabel("downstream test error (1 − accuracy)", color="#c62828")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="best")
    ax.set_title(f"{exp['name'].replace('_', ' ')} (bands: ± 1 sd over seeds)", fontsize=10)
    for i, dec in enumerate(exp["decomposition"]):
        parts = [t for t in dec["terms"] if t.startswith("upstream:")]
        stack = (parts + ["compatibility"] if parts else ["upstream"]) + ["approximation", "estimation"]
        items = [("L*", dec["values"]["L*"]["mean"])] + [(t, dec["terms"][t]["mean"]) for t in stack]
        stack_terms(bx, i, items, parts, labelled=i == 0)
    bx.axhline(0, color="#607d8b", lw=0.8)
    bx.set_xticks(x, labels)
    bx.set_xlabel(knob_name, fontsize=7)
    bx.set_ylabel(f"downstream risk ({exp['downstream']['loss']})")
    bx.legend(fontsize=7)
    bx.set_title("decomposition at each knob value (hatched: negative; black: L(v̂∘u))", fontsize=9)
    fig.tight_layout()
    return fig


def grid_figure(exp: Mapping[str, Any]):
    """A two-path grid knob (the entanglement's (p1, p2)) in the paper's form: the downstream's
    mean test error over the grid, as a heat map, each cell written out."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = exp["knob"]["values"]
    xs = sorted({v[0] for v in values}, reverse=True)
    ys = sorted({v[1] for v in values}, reverse=True)
    err = np.full((len(ys), len(xs)), np.nan)
    for v, e in zip(values, exp["downstream"]["error"]):
        err[ys.index(v[1]), xs.index(v[0])] = e["mean"]
    fig, ax = plt.subplots(figsize=(1.0 + 0.62 * len(xs), 0.8 + 0.5 * len(ys)))
    im = ax.imshow(err, cmap="viridis", origin="upper", aspect="auto")
    for i in range(len(ys)):
        for j in range(len(xs)):
            if np.isfinite(err[i, j]):
                ax.text(j, i, f"{err[i, j]:.3f}", ha="center", va="center", fontsize=6, color="w")
    paths = exp["knob"]["set"]
    ax.set_xticks(range(len(xs)), [f"{x:g}" for x in xs])
    ax.set_yticks(range(len(ys)), [f"{y:g}" for y in ys])
    ax.set_xlabel(paths[0], fontsize=8)
    ax.set_ylabel(paths[1], fontsize=8)
    fig.colorbar(im, ax=ax, label="downstream test error")
    ax.set_title(f"{exp['name'].replace('_', ' ')}: downstream error over the grid "
                 f"(mean of {len(exp['downstream']['error'][0]['per_seed'])} seeds)", fontsize=9)
    fig.tight_layout()
    return fig


def save_figures(exp: Mapping[str, Any], out: Path) -> list[str]:
    """Draw an experiment's figure into ``out`` (``paper_toys_NAME.png``); returns its name."""
    import matplotlib.pyplot as plt

    fig = grid_figure(exp) if exp["knob"].get("grid") and len(exp["knob"]["set"]) == 2 else sweep_figure(exp)
    name = f"paper_toys_{exp['name']}.png"
    fig.savefig(Path(out) / name, dpi=110)
    plt.close(fig)
    return [name]


def loss_sign(metric: str) -> float:
    """+1 when the metric is a loss, −1 when it is accuracy: a metric delta times it is a loss delta."""
    return -1.0 if metric == "accuracy" else 1.0


# -- the results table ----------------------------------------------------------------------------
def _ci(d: Mapping[str, Any], digits: int = 3) -> str:
    lo, hi = d["ci"] if "ci" in d else d["delta_ci"]
    mean = d["mean"] if "mean" in d else d["delta_mean"]
    if lo is None or not np.isfinite(lo):
        return f"{mean:+.{digits}f}"
    return f"{mean:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def _level(d: Mapping[str, Any], digits: int = 3) -> str:
    sd = d.get("sd")
    return f"{d['mean']:.{digits}f} ± {sd:.{digits}f}" if sd is not None and np.isfinite(sd) else f"{d['mean']:.{digits}f}"


def results_markdown(report: Mapping[str, Any]) -> str:
    """The results table: per experiment, the paper's claim against what this world shows."""
    lines = ["# The paper's illustrative experiments on the street-digits world", "",
             f"Command: `{report['machine']['command']}`  ",
             f"Seeds: {report['seeds']} ({len(report['seeds'])}); profile `{report['profile']}`; data: "
             f"{report['data']}.  ",
             f"Machine: {report['machine']['platform']}, {report['machine']['cpus']} CPUs; wall time "
             f"{report['wall_time_s']:.0f} s (store: {report['store']['hits']} fits reused, "
             f"{report['store']['misses']} computed); load average (1/5/15 min) at start "
             f"{report['machine']['load_start']}, at the end {report['machine']['load_end']}; "
             f"executor `{report['machine']['executor']}`.", "",
             "Each row is one change of the knob, from its first value (old) to another (new); "
             "every change of the sweep has its row. Upstream and downstream are judged on their "
             "own metric, paired over seeds (95% t interval); *self-defeating* is the project's one "
             "rule (the changed upstream improved beyond noise and the retrained downstream got "
             "worse beyond noise). The dominant term is the decomposition's (downstream log loss; "
             "with two upstreams the upstream term is split into each upstream's part and their "
             "compatibility) and ✓ when it is the mechanism the paper names (a mechanism of "
             "getting worse: only where the downstream's log loss rose). Where a change is not "
             "self-defeating, *detectable* is the smallest true change of the downstream's error "
             "these seeds detect (power 0.8, `stats.detectable_effect`) and, where the downstream's "
             "error rose, the seeds that rise would need to be detected (`stats.seeds_needed`); "
             f"*{IDENTICAL}* where every seed's change was the same (no spread to size an effect by).", "",
             *protocol_lines(report.get("protocol", {}), report["experiments"]),
             *premise_lines(report["experiments"]),
             "## Claims", "",
             "| Experiment (knob old → new) | Paper's claim | Upstream: own loss, old → new (Δ [95% CI]) | "
             "Downstream error, old → new (Δ [95% CI]) | Self-defeating | Dominant term (Δ nats) vs "
             "paper's | The paper's term: Δ nats [95% CI] | Detectable Δ error / seeds for the observed Δ |",
             "|---|---|---|---|---|---|---|---|"]
    for exp in report["experiments"]:
        paper = exp["paper"]
        for i, ch in enumerate(exp["changes"], start=1):
            ups = []
            for u, d in ch["upstream"].items():
                errs = exp["upstream"]["error"][u]
                sign = loss_sign(d["metric"])
                lo, hi = sorted((sign * d["delta_ci"][0], sign * d["delta_ci"][1]))
                ups.append(f"{u} ({'error' if d['metric'] == 'accuracy' else d['metric']}): "
                           f"{errs[0]['mean']:.3f} → {errs[i]['mean']:.3f} "
                           f"({sign * d['delta_mean']:+.3f} [{lo:+.3f}, {hi:+.3f}]) {d['verdict']}")
            dn = ch["downstream"]
            de = exp["downstream"]["error"]
            sg = loss_sign(dn["metric"])
            lo, hi = sorted((sg * dn["delta_ci"][0], sg * dn["delta_ci"][1]))
            down = (f"{de[0]['mean']:.3f} → {de[i]['mean']:.3f} ({sg * dn['delta_mean']:+.3f} "
                    f"[{lo:+.3f}, {hi:+.3f}]) {dn['verdict']}")
            term = ch["dominant_term"]
            mech = paper.get("mechanism", "")
            match = term == mech or (mech == "upstream" and term.startswith("upstream"))
            worse = ch["deltas"]["total"]["mean"] > 0   # a mechanism of getting worse needs a rise
            dom = (f"{term} ({ch['deltas'][term]['mean']:+.3f}) "
                   + (f"{'✓' if match else '✗'} (paper: {mech})" if worse else
                      f"— (log loss fell; paper: {mech})"))
            det = ch["detectable"]["downstream"]
            need = det["seeds_for_observed"]
            if det["observed"] <= 0:   # not the paper's direction: no seeds would show it
                need = "— (Δ ≤ 0)"
            elif need is None:
                need = "> 1000"
            detect = ("—" if ch["self_defeating"] else IDENTICAL if det.get("identical")
                      else f"{detectable_text(det['detectable'], False)} / {need}")
            claim = paper.get("claim", "") if i == 1 else "〃"
            own = paper_term(ch, mech)
            own_cell = f"{own}: {_ci(ch['deltas'][own])}" if own else "—"
            if i == 1 and exp.get("premise", {}).get("met") is False:
                claim = f"**premise not met** — {claim}"
            lines.append(f"| {exp['name'].replace('_', ' ')} ({exp['knob']['labels'][0]} → "
                         f"{exp['knob']['labels'][i]}) | {claim} | {'; '.join(ups)} | {down} | "
                         f"{'✓' if ch['self_defeating'] else '✗'} | {dom} | {own_cell} | {detect} |")
    lines += ["", "## Per experiment", ""]
    for exp in report["experiments"]:
        lines += _experiment_section(exp)
    lines += ["## How this world differs from the paper's runs", "", *NOTES, ""]
    return "\n".join(lines) + "\n"


def paper_term(change: Mapping[str, Any], mechanism: str) -> str | None:
    """The delta of a change that carries the paper's mechanism (``upstream`` is the changed
    upstream's own part where the upstream term is split)."""
    deltas = change["deltas"]
    if mechanism == "upstream":
        parts = [k for k in deltas if k.startswith("upstream:")]
        return parts[0] if len(parts) == 1 else ("upstream" if "upstream" in deltas else None)
    return mechanism if mechanism in deltas else None


def rose(d: Mapping[str, Any]) -> bool:
    """Whether a delta's interval lies above zero (a rise beyond noise)."""
    lo = d["ci"][0]
    return lo is not None and np.isfinite(lo) and lo > 0


def _experiment_section(exp: Mapping[str, Any]) -> list[str]:
    mech = exp["paper"].get("mechanism", "")
    n = len(exp["changes"])
    flagged = sum(c["self_defeating"] for c in exp["changes"])
    worse = sum(c["downstream"]["verdict"] == "worse" for c in exp["changes"])
    up_better = sum(all(c["upstream"][u]["verdict"] == "improved" for u in exp["changed"] if u in c["upstream"])
                    for c in exp["changes"])
    terms = [paper_term(c, mech) for c in exp["changes"]]
    term_rose = sum(bool(t) and rose(c["deltas"][t]) for c, t in zip(exp["changes"], terms))
    out = [f"### {exp['name'].replace('_', ' ')}", "", exp["description"], "",
           premise_sentence(exp), "",
           f"In {n} change(s) from the first knob value: the changed upstream improved beyond noise "
           f"in {up_better}, the downstream got worse beyond noise in {worse}, the rule flagged "
           f"{flagged} as self-defeating, and the term of the paper's mechanism ({mech}) rose "
           f"beyond noise in {term_rose}.", "",
           f"Knob: {exp['knob']['name']}; values {exp['knob']['labels']}; changed node(s) "
           f"{exp['changed']}; figure `paper_toys_{exp['name']}.png`.", "",
           "| knob | " + " | ".join(f"{u} {'error' if exp['upstream']['metric'][u] == 'accuracy' else exp['upstream']['metric'][u]}"
                                    for u in exp["upstream"]["nodes"])
           + " | downstream error | downstream log loss | L* | upstream | approximation | estimation |",
           "|---" * (len(exp["upstream"]["nodes"]) + 7) + "|"]
    for i, label in enumerate(exp["knob"]["labels"]):
        dec = exp["decomposition"][i]
        row = [label] + [_level(exp["upstream"]["error"][u][i]) for u in exp["upstream"]["nodes"]]
        row += [_level(exp["downstream"]["error"][i]), _level(exp["downstream"]["metrics"][i]["log_loss"]),
                _level(dec["values"]["L*"]), _level(dec["terms"]["upstream"]),
                _level(dec["terms"]["approximation"]), _level(dec["terms"]["estimation"])]
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    out += ["Changes from the first knob value (downstream Δ error and the decomposition's deltas, "
            "95% intervals over seeds):", ""]
    for ch in exp["changes"]:
        dn = ch["downstream"]
        sg = loss_sign(dn["metric"])
        lo, hi = sorted((sg * dn["delta_ci"][0], sg * dn["delta_ci"][1]))
        terms = ", ".join(f"{k} {_ci(d)}" for k, d in ch["deltas"].items() if k != "total")
        verdicts = ", ".join(f"{u} {d['verdict']}" for u, d in ch["upstream"].items())
        det = ch["detectable"]["downstream"]
        out.append(f"- → {ch.get('label', exp['knob']['labels'][exp['changes'].index(ch) + 1])}: verdicts {verdicts}; downstream Δ error "
                   f"{sg * dn['delta_mean']:+.4f} [{lo:+.4f}, {hi:+.4f}] ({dn['verdict']}); "
                   f"{'**self-defeating**' if ch['self_defeating'] else 'not self-defeating'}; "
                   f"dominant {ch['dominant_term']}; Δ log loss {_ci(ch['deltas']['total'])}: {terms}. "
                   f"Detectable Δ error {detectable_text(det['detectable'], det.get('identical'), '.4f')}.")
    out.append("")
    warnings = sorted({w for d in exp["decomposition"] for w in d["warnings"]})
    if warnings:
        out += ["Decomposition warnings:", ""] + [f"- {w}" for w in warnings] + [""]
    return out


#: the protocol points as the paper ran them and what each value means here
PROTOCOL_TEXT = {
    "downstream_data": ("The downstream's training images",
                        "the upstream's own training images (`utils.py`: one training set for both)",
                        {"upstream": "the upstream's pool, restricted to the downstream's digits, clean labels",
                         "separate": "a separate stream of unseen images"}),
    "upstream_run": ("The upstreams' run",
                     "200 epochs, last checkpoint (dd, hs, uu); 500 epochs, best clean-validation "
                     "checkpoint (lf)",
                     {"epochs": "the pipeline's `epochs` passes; last checkpoint, best clean-validation "
                                "for the regression (lf)",
                      "steps": "the pipeline's `steps` Adam steps whatever the data's size; best "
                               "clean-validation checkpoint for every upstream"}),
    "swap_order": ("Entanglement's swap order",
                   "a stored model ranking (`aul_for_uu-ent.pth`), label-dependent",
                   {"model": "area under each training example's loss curve of a clean ConvNet "
                             "(node `rank`, stored like any fit), hardest first",
                    "latents": "the mean percentile rank of six nuisance latents, label-independent"}),
    "augment": ("Augmentation", "random crop (4 px padding) and horizontal flip",
                {"crop": "random crop (4 px black padding); no flip: a mirrored digit is a "
                         "different glyph, which the world never renders and a test image never is",
                 "crop_flip": "random crop (4 px) and horizontal flip, as the paper",
                 "none": "none"}),
    "upstream_net": ("The upstreams' network",
                     "torchvision's ResNet-18 (lf, dd, uu); the two-block ConvNet (hs)",
                     {"convnet": "the two-block ConvNet for every upstream (a fifth of ResNet-18's "
                                 "CPU time)",
                      "paper": "ResNet-18 (torchvision's form, `entangle.models.resnet`) for lf, dd "
                               "and uu; the ConvNet for hs and for the swap ranking"}),
}


def protocol_lines(protocol: Mapping[str, str], experiments: Sequence[Mapping[str, Any]] = ()) -> list[str]:
    """The protocol of the run beside the paper's (``protocol.POINT=VALUE`` overrides each), and
    how long each experiment's upstreams trained in this run."""
    if not protocol:
        return []
    out = ["## Protocol", "", "| Point | The paper | This run (`protocol.` option = value) |", "|---|---|---|"]
    for point, value in protocol.items():
        title, paper, meanings = PROTOCOL_TEXT[point]
        out.append(f"| {title} | {paper} | `{point}={value}`: {meanings.get(value, value)} |")
    runs = [f"{exp['name'].replace('_', ' ')}: " + "; ".join(f"{u} {length}" for u, length in run.items())
            for exp in experiments if (run := exp.get("upstream", {}).get("run"))]
    if runs:
        out += ["", "The upstreams' run in this run: " + "; ".join(runs) + "."]
    return out + [""]


def premise_sentence(exp: Mapping[str, Any]) -> str:
    """The premise of one experiment, first, as a sentence."""
    pr = exp.get("premise") or {}
    met = pr.get("met")
    head = {True: "**Premise met**", False: "**Premise NOT met — the verdicts below do not test the "
            "paper's mechanism**", None: "Premise not checked"}[met]
    return f"{head}: {pr.get('statement', '')}."


def premise_lines(experiments: Sequence[Mapping[str, Any]]) -> list[str]:
    """The premise table: per experiment, what its mechanism needs, the rule and the outcome."""
    out = ["## Premises (checked before any verdict)", "",
           "| Experiment | Premise (the rule) | Measured | Met |", "|---|---|---|---|"]
    for exp in experiments:
        pr = exp.get("premise") or {}
        met = {True: "✓", False: "✗", None: "—"}[pr.get("met")]
        out.append(f"| {exp['name'].replace('_', ' ')} | {pr.get('rule', '')} | {pr.get('statement', '')} | {met} |")
    return out + [""]


#: what the generated table says about the setting, whatever the numbers
NOTES = (
    "- Data: the street-digits world (`entangle/data/street_digits.py`, 32×32 colour crops, "
    "exact latents), rendered per seed (each seed is a new world); the paper used SVHN "
    "(73,257 training images). Split sizes and epochs are in `conf/pipeline/paper_*.yaml` and "
    "the profile's file under `conf/experiment_profile/paper_toys/`.",
    "- Upstreams: the network the protocol table's last row names (the paper's small ConvNet, "
    "two 5×5 conv blocks and 512 features, or its ResNet-18 with 512 pooled features); the "
    "paper used ResNet-18 for all but the hypothesis-space experiment. Adam "
    "(lr 1e-3), ×0.1 at 50 % and 75 % of the run, as the paper; run length, checkpoint and "
    "augmentation as the protocol table and the line below it say (where fewer epochs than "
    "the paper's 200–500: a CPU budget; the premise table says whether they sufficed).",
    "- Downstreams: `MLPNode` (standardized inputs; one 128-unit hidden layer for the "
    "loss-function experiment, linear otherwise), Adam lr 0.01, cosine schedule and early "
    "stopping on a 10 % share instead of the paper's 100 epochs with its step schedule. The "
    "paper's downstreams read features of *augmented* training images (one pass of its "
    "training transform); here they read the upstream's outputs on the plain images.",
    "- Entanglement: both upstreams train on the whole pool at every knob value; the knob sets "
    "only the share swapped (0.5·p of the pool's 1s and 7s, in the swap order of the protocol "
    "table). The default sweeps upstream 1's p with upstream 2 at 1.0; `profile=paper_grid` "
    "runs the paper's whole (p1, p2) grid. The downstream reads the two predicted labels, a "
    "linear reparametrization of the paper's concatenated one-hots.",
    "- The upstream loss of the data-distribution and hypothesis-space experiments is here the "
    "upstream's own task error (the project's rule: every node on its own metric); the paper's "
    "figures plot a 1-nearest-neighbour error of its features, which the premise of the "
    "hypothesis-space experiment reads and the figures draw dashed.",
    "- The paper's code does not estimate the decomposition's terms for these experiments; the "
    "mechanism in the claim column is the one the paper names for each.",
)


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    """A one-screen summary: per experiment, the last change's verdicts and dominant term."""
    lines = [f"paper_toys on {report['data']}, seeds {report['seeds']}, protocol "
             + ", ".join(f"{k}={v}" for k, v in report.get("protocol", {}).items())]
    for exp in report["experiments"]:
        pr = exp.get("premise") or {}
        lines.append(f"  {exp['name']:<18} premise {({True: 'met', False: 'NOT MET', None: 'unchecked'})[pr.get('met')]}: "
                     f"{pr.get('rule', '')}")
        ch = exp["changes"][-1]
        ups = ", ".join(f"'{u}' {d['verdict']}" for u, d in ch["upstream"].items())
        lines.append(f"  {exp['name']:<18} knob {exp['knob']['labels'][0]} -> {exp['knob']['labels'][-1]}: "
                     f"upstream {ups}; downstream '{exp['downstream']['node']}' {ch['downstream']['verdict']}; "
                     f"{'SELF-DEFEATING' if ch['self_defeating'] else 'not self-defeating'}; "
                     f"dominant {ch['dominant_term']}")
    return lines


