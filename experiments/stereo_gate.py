"""The stereo gate: does the learned stereo beat SGBM on the pixels of the objects that matter?

A learned upstream should be at least as good as the classical one on what its downstream
reads before the downstream's verdicts mean anything. This script fine-tunes the stereo network
from the pretrained checkpoint (or pretrains it first) with the disparity loss and with the
depth loss on the street world's training scenes, runs SGBM and the oracle on the test scenes,
and prints:

* the gate table: per class (car, pedestrian) and distance bin, the median per-object depth
  error and the share of objects off by more than 1 m (:mod:`entangle.analysis.object_errors`),
  with the verdict "the learned stereo must beat SGBM on object pixels for both classes up to
  40 m";
* whole-image EPE and D1 of every system;
* the costs: pretraining, fine-tuning per model, prediction per scene (with the load average).

::

    python experiments/stereo_gate.py                                  # the default sizes
    python experiments/stereo_gate.py --train 16 --test 16 --epochs 1 \\
        --pretrain-images 32                                           # about a minute

No detector runs here. The world is rendered on first use (or read from ``--root``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from entangle.analysis.object_errors import format_gate_table, gate_table, gate_verdict
from entangle.data.flying import FlyingSource
from entangle.data.world_source import WorldSource
from entangle.models.stereo import ClassicalStereo, OracleStereo, StereoCheckpoint, StereoNet

#: the shipped pretrained network (see datasets/world.md, "Stereo on this world")
CHECKPOINT = "datasets/checkpoints/stereo_pretrained.pt"


def _timed(fn, *a, **kw):
    start = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="a KITTI-layout world folder (default: render it)")
    parser.add_argument("--scenes", type=int, default=1200, help="scenes of the world to render")
    parser.add_argument("--world-seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=150, help="training scenes (the first of the train list)")
    parser.add_argument("--test", type=int, default=500, help="test scenes")
    parser.add_argument("--checkpoint", default=CHECKPOINT, help="pretrained network; 'none' pretrains")
    parser.add_argument("--sha256", default=None, help="its expected digest (default: the file's own, "
                        "read from datasets/checkpoints/stereo_pretrained.json when present)")
    parser.add_argument("--pretrain-images", type=int, default=3000, help="when pretraining here")
    parser.add_argument("--pretrain-epochs", type=int, default=1)
    parser.add_argument("--pretrain-lr", type=float, default=2e-3)
    parser.add_argument("--scratch", action="store_true", help="also fine-tune from a random init")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop", default="96x320", help="HxW training crops, or none")
    parser.add_argument("--objectives", nargs="+", default=["disparity", "depth"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--sgbm", default="{}", help="JSON parameters of OpenCV SGBM")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--net", default="{}", help="JSON network options of StereoNet (disp_step, "
                        "refine, ...): those of the checkpoint")
    parser.add_argument("--out", default=None, help="write every number as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    costs: dict[str, float] = {}
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; "
          f"torch threads: {args.threads}")

    src = WorldSource(root=args.root, n_scenes=args.scenes, seed=args.world_seed)
    (train, test), t = _timed(lambda: (src.load("train", 0), src.load("test", 0)))
    costs["world: render/load (s)"] = t
    keys = ("left", "right", "calib", "baseline")
    n_tr, n_te = min(args.train, len(train["left"])), min(args.test, len(test["left"]))
    x_train = {k: train[k][:n_tr] for k in keys}
    y_train = {"disparity": train["disparity"][:n_tr]}
    x_test = {k: test[k][:n_te] for k in keys}
    y_test = {"disparity": test["disparity"][:n_te]}
    gt_depth = np.asarray(test["depth"][:n_te])
    labels = test["labels"].take(np.arange(n_te))
    print(f"world: {n_tr} training and {n_te} test scenes of {x_train['left'].shape[1:3]} "
          f"({src.folder()})")

    net = json.loads(args.net)
    if args.checkpoint != "none":
        digest = args.sha256
        if digest is None:
            side = Path(args.checkpoint).with_suffix(".json")
            digest = json.loads(side.read_text())["sha256"] if side.is_file() else None
        if digest is None:
            from entangle.models.stereo import file_sha256
            digest = file_sha256(args.checkpoint)
        pretrained, t = _timed(lambda: StereoCheckpoint(path=args.checkpoint, sha256=digest).fit({}, {}, seed=0))
        meta = pretrained.meta_
        costs["pretraining, as recorded in the checkpoint (s)"] = sum(meta.get("seconds", {}).values())
        print(f"pretrained network: {args.checkpoint} ({meta.get('command', '?')}; "
              f"{meta.get('seconds')} s at load {meta.get('load_average')})")
    else:
        flying = FlyingSource(n_train=args.pretrain_images, n_val=0, seed=0,
                              config={"max_disp": StereoNet(**net).max_disp})
        fl, t_r = _timed(flying.load, "train", 0)
        pre = StereoNet(objective="disparity", epochs=args.pretrain_epochs, lr=args.pretrain_lr,
                        batch_size=args.batch_size, **net)
        pretrained, t_p = _timed(pre.fit, {k: fl[k] for k in keys}, {"disparity": fl["disparity"]}, seed=0)
        costs["pretraining: render flying images (s)"] = t_r
        costs["pretraining: train (s)"] = t_p
        print(f"pretrained here on {args.pretrain_images} flying images: render {t_r:.0f} s, train {t_p:.0f} s")

    crop = None if args.crop == "none" else [int(v) for v in args.crop.split("x")]
    systems: dict[str, list[np.ndarray]] = {}
    scores: dict[str, list[dict]] = {}

    def evaluate(name: str, node) -> None:
        preds, t = _timed(node.predict, x_test)
        costs[f"{name}: predict per scene (s)"] = t / n_te
        systems.setdefault(name, []).append(preds["depth"])
        scores.setdefault(name, []).append(node.score(preds, y_test))

    evaluate("pretrained", pretrained)
    starts = [("", pretrained)] + ([(" (scratch)", None)] if args.scratch else [])
    for suffix, start in starts:
        for objective in args.objectives:
            for seed in args.seeds:
                if start is not None:
                    net = start.network_config().to_dict()      # fine-tune the same network
                node = StereoNet(objective=objective, epochs=args.epochs, lr=args.lr,
                                 batch_size=args.batch_size, crop=crop, **net)
                if start is not None:
                    node.init_from(start)
                name = f"{objective} loss{suffix}"
                _, t = _timed(node.fit, x_train, y_train, seed=seed)
                costs[f"{name}: fine-tune (s)"] = t
                print(f"{name}, seed {seed}: fine-tuned in {t:.0f} s (load {os.getloadavg()[0]:.2f})", flush=True)
                evaluate(name, node)
    sgbm = ClassicalStereo(method="sgbm", params=json.loads(args.sgbm) or None).fit(x_test, {}, seed=0)
    evaluate("sgbm", sgbm)
    oracle_in = {"disparity_gt": y_test["disparity"], "calib": x_test["calib"], "baseline": x_test["baseline"]}
    systems["oracle"] = [OracleStereo().fit({}, {}, seed=0).predict(oracle_in)["depth"]]

    table = gate_table(systems, gt_depth, labels)
    learned = [n for n in systems if n.endswith("loss")]
    verdict = gate_verdict(table, learned, reference="sgbm", up_to=40.0)
    print()
    print(format_gate_table(table, verdict))
    print("\nWhole image (test scenes; mean over seeds):\n")
    print("| system | EPE (px) | D1 (%) | depth MAE (m) |\n|---|---|---|---|")
    for name, ss in scores.items():
        print(f"| {name} | {np.mean([s['epe'] for s in ss]):.3f} | {100 * np.mean([s['d1'] for s in ss]):.2f} | "
              f"{np.mean([s['depth_mae'] for s in ss]):.3f} |")
    print(f"\nCosts (load average now {os.getloadavg()[0]:.2f}; {args.threads} torch thread(s)):")
    for k, v in costs.items():
        print(f"  {k}: {v:.3f}" if v < 1 else f"  {k}: {v:.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "table": table, "verdict": verdict,
                                              "scores": scores, "costs": costs}, indent=1, default=float))


if __name__ == "__main__":
    main()
