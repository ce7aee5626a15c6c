"""Does each paper-toys upstream earn its place? The downstream on raw pixels beside it.

Where ``experiment=paper_toys`` reports no self-defeating change, that null means something
only if the upstream's output is worth reading: this fits the experiment's own downstream node
(same class and settings, from ``conf/pipeline/paper_*.yaml``) on the flattened image instead of
the upstream's features, on the same splits and seeds, and prints its test error beside the
downstream errors in ``experiments/paper_toys/RESULTS.md``::

    python experiments/paper_toys_pixels.py [--seeds 0 1 2] [--experiments data_distribution hypothesis_space]

Only the experiments whose downstream reads features (data distribution, hypothesis space)
have this baseline; the other two read a regression value or predicted labels.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("ENTANGLE_PROGRESS", "0")

import numpy as np
from hydra.utils import instantiate
from omegaconf import OmegaConf

from entangle.system import WIRING_KEYS

CONF = Path(__file__).resolve().parents[1] / "conf" / "pipeline"


def pixel_error(name: str, seed: int) -> float:
    """Test error of the experiment's downstream fitted on pixels (data_seed: None, so each seed
    renders its own world, as in the experiment)."""
    pipe = OmegaConf.to_container(OmegaConf.load(CONF / f"paper_{name}.yaml"), resolve=True)
    data_cfg, down_cfg = pipe["nodes"]["data"], pipe["nodes"]["down"]
    target = down_cfg["targets"]["y"].split(".", 1)[1]
    data = instantiate({k: v for k, v in data_cfg.items() if k not in WIRING_KEYS})
    down = instantiate({k: v for k, v in down_cfg.items() if k not in WIRING_KEYS})
    split = lambda s: data.load(s, seed)          # noqa: E731
    train, test = split(down_cfg.get("fit_split", "train")), split(pipe["eval_split"])
    down.fit({"x": train["image"]}, {"y": train[target]}, seed=seed)
    preds = down.predict({"x": test["image"]})
    return 1.0 - down.score(preds, {"y": test[target]})["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--experiments", nargs="+", default=["data_distribution", "hypothesis_space"])
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    for name in args.experiments:
        t0 = time.perf_counter()
        errs = [pixel_error(name, s) for s in args.seeds]
        print(f"{name}: downstream on raw pixels, test error {np.mean(errs):.3f} ± {np.std(errs, ddof=1):.3f} "
              f"(seeds {args.seeds}: {', '.join(f'{e:.3f}' for e in errs)}; {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
