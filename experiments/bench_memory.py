"""Where a run's memory goes: one system of an experiment at one seed, fitted into a store, with
the peak resident set and the peak anonymous memory of every fit (Linux: read from /proc).

RSS also counts the pages of memory-mapped files a node has read (the decoded world, store
entries): the kernel reclaims those under pressure, so the anonymous figure is what a fit holds.

    python experiments/bench_memory.py                     # the case study's old system, seed 0
    python experiments/bench_memory.py --system new pipeline.nodes.world.limits.test=120
    python experiments/bench_memory.py --experiment paper_toys --store stores/memory   # a named store

A fit's row runs from its 'fitting' log line to the next one. The line comes after its inputs
were gathered, so loading them (and computing function nodes such as pseudo-LiDAR) counts in
the row above. The figures are sampled every 20 ms, so a shorter spike may be missed.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
from pathlib import Path

from entangle.executor import check_seeds

REPO = Path(__file__).resolve().parent.parent


def memory() -> tuple[float, float]:
    """This process's resident set and anonymous resident memory, in GB."""
    got = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                got[key] = int(rest.split()[0]) / 2**20
    return got["VmRSS"], got["RssAnon"]


class Stages(logging.Handler):
    """Splits the run at each 'fitting ...' log line and keeps every stage's peaks."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list] = []
        self.name, self.start, self.peak = "start-up", time.perf_counter(), list(memory())
        self._guard = threading.Lock()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            rss, anon = memory()
            with self._guard:
                self.peak = [max(self.peak[0], rss), max(self.peak[1], anon)]
            time.sleep(0.02)

    def close_stage(self, next_name: str) -> None:
        with self._guard:
            self.rows.append([self.name, time.perf_counter() - self.start, *self.peak])
            self.name, self.start, self.peak = next_name, time.perf_counter(), list(memory())

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("fitting "):
            self.close_stage(msg[len("fitting "):].split(" on split")[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiment", default="fixes_that_fail")
    ap.add_argument("--system", default="old", help="old, new or a reference's name")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--store", default=None, help="store root (default: a new temporary one)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. profile=quick")
    args = ap.parse_args()
    if not Path("/proc/self/status").is_file():
        ap.error("it reads memory from /proc/self/status, which this system (not Linux) lacks")
    try:
        check_seeds([args.seed])
    except ValueError as err:
        ap.error(f"--seed: {err}")

    from hydra import compose, initialize_config_dir

    from entangle.study import Study, StudyError

    stages = Stages()
    logging.getLogger("entangle.executor").addHandler(stages)
    logging.getLogger("entangle.executor").setLevel(logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or str(Path(tmp) / "store")
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=[f"experiment={args.experiment}", f"store.root={store}",
                                               f"output_dir={tmp}/out", *args.overrides])
        study = Study.from_config(cfg)
        try:
            study.runs(args.system, seeds=[args.seed])
        except StudyError as err:   # e.g. no such system: said in one line, nothing was fitted
            ap.error(str(err))
        stages.close_stage("")
    print(f"{args.experiment}, system {args.system!r}, seed {args.seed} ({' '.join(args.overrides) or 'defaults'}):")
    print(f"{'stage':58s} {'s':>7s} {'peak RSS GB':>12s} {'peak anon GB':>13s}")
    for name, secs, rss, anon in stages.rows:
        print(f"{name[:58]:58s} {secs:7.1f} {rss:12.2f} {anon:13.2f}")
    print(f"{'whole run':58s} {sum(r[1] for r in stages.rows):7.1f} "
          f"{max(r[2] for r in stages.rows):12.2f} {max(r[3] for r in stages.rows):13.2f}")


if __name__ == "__main__":
    main()
