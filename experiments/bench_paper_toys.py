"""Benchmark: what the paper_toys experiment costs on this machine, per experiment and knob value.

    python experiments/bench_paper_toys.py [--seed 100] [--experiments loss_function ...]

Fits one seed of every experiment at every knob value of the paper profile (the default
profile's values are a subset, at the same sizes) into a temporary store, one process and one
torch thread (as ``executor=local`` with ``OMP_NUM_THREADS=1``), and prints for each knob value
the wall time of its fits and decomposition and the upstream's own fit time and test loss. It
then times the quick profile end to end and projects the default (3 seeds) and paper (10 seeds)
profiles from the per-seed costs. Rendering the seed's world is timed apart (a temporary
rendering cache). The load average is printed before and after: on a shared machine the wall
times move with the other jobs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("ENTANGLE_PROGRESS", "0")

CONF = Path(__file__).resolve().parents[1] / "conf"


def compose(*overrides: str, runnable: bool = False):
    """The composed config of ``experiment=paper_toys`` with ``overrides``; ``runnable``: with
    Hydra's runtime set, as ``python -m entangle`` would run it."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose("config", overrides=["experiment=paper_toys", *overrides],
                            return_hydra_config=runnable)
    if runnable:
        HydraConfig().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg


def load() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=100, help="the one seed fitted")
    parser.add_argument("--experiments", nargs="+", default=None, help="default: all four")
    parser.add_argument("--skip-quick", action="store_true", help="do not time the quick profile")
    args = parser.parse_args()

    import torch
    torch.set_num_threads(1)
    from omegaconf import OmegaConf

    from entangle.data import street_digits as sd
    from entangle.decompose import decompose
    from entangle.store import Store
    from entangle.study import Study
    from entangle.tasks.paper_toys import _estimators, knob_label, knob_systems, run_experiment

    print(f"cores visible: {os.cpu_count()}, torch threads: {torch.get_num_threads()}, "
          f"load average (1/5/15 min): {load()}", flush=True)
    paper, default = compose("profile=paper"), compose("profile=default")
    names = args.experiments or list(paper.experiments.keys())
    tmp = Path(tempfile.mkdtemp(prefix="bench-paper-toys-"))
    sd.CACHE_ROOT = tmp / "render"          # time the rendering of this seed's world
    store = Store(tmp / "store")
    per_value: dict[str, dict[str, float]] = {}
    render: dict[str, float] = {}
    for name in names:
        exp = paper.experiments[name]
        values, systems, changed = knob_systems(exp, paper, name)
        t = time.perf_counter()
        src = systems[0].specs["data"].node
        for split in systems[0].splits:
            src.load(split, args.seed)
        render[name] = time.perf_counter() - t
        est = _estimators(exp, exp.get("reference") or paper.reference)
        study = Study(systems[0], seeds=[args.seed], store=store)
        v = str(exp.downstream)
        per_value[name] = {}
        print(f"\n{name}: rendering its world (seed {args.seed}) {render[name]:.1f} s", flush=True)
        for value, system in zip(values, systems):
            t = time.perf_counter()
            runs = study.fit(system.labelled(f"knob {knob_label(value)}"), [args.seed])
            fitted = time.perf_counter() - t
            decompose(system, v, [args.seed], store, estimators=est, fit=study.fit)
            total = time.perf_counter() - t
            per_value[name][knob_label(value)] = total
            parts = []
            for u in (exp.get("judged") or changed):
                meta = store.meta(runs[args.seed].keys[u])
                m = meta["metrics"][str(exp.judge_split)]
                own = f"error {1 - m['accuracy']:.3f}" if "accuracy" in m else f"mse {m['mse']:.3f}"
                parts.append(f"{u} fit {meta['fit_seconds']:.1f} s, test {own}")
            print(f"  knob {knob_label(value):>3}: {total:6.1f} s (system {fitted:.1f} s, "
                  f"decomposition {total - fitted:.1f} s); {'; '.join(parts)}", flush=True)
        t = time.perf_counter()
        run_experiment(name, exp, paper, exp.get("reference") or paper.reference, [args.seed], store)
        per_value[name]["changes"] = time.perf_counter() - t   # the changes' studies: mostly cached
        print(f"  changes' studies and decompositions (cached fits): {per_value[name]['changes']:.1f} s",
              flush=True)

    quick_s = None
    if not args.skip_quick:
        from entangle.cli import run
        quick = compose("profile=quick", f"store.root={tmp / 'quick-store'}",
                        f"output_dir={tmp / 'quick-run'}", runnable=True)
        t = time.perf_counter()
        run(quick)
        quick_s = time.perf_counter() - t

    print("\nprojected wall time, one process and one torch thread, at this load:")
    if quick_s is not None:
        print(f"  quick   ({len(compose('profile=quick').seeds)} seeds, measured end to end): {quick_s:.0f} s")
    for label, cfg in (("default", default), ("paper", paper)):
        seeds = len(cfg.seeds)
        total = 0.0
        for name in names:
            vals = [knob_label(x) for x in OmegaConf.to_container(cfg.experiments[name].knob["values"])]
            per_seed = render[name] + sum(per_value[name][x] for x in vals) + per_value[name]["changes"]
            total += seeds * per_seed
            print(f"  {label:<7} {name:<18} {seeds} seeds x {per_seed:6.1f} s = {seeds * per_seed / 60:5.1f} min")
        print(f"  {label:<7} total: {total / 60:.1f} min")
    print(f"\nload average after (1/5/15 min): {load()}")


if __name__ == "__main__":
    main()
