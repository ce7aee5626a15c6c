"""The stereo gate: does the learned stereo beat SGBM on the pixels of the objects that matter?

A learned upstream should be at least as good as the classical one on what its downstream
reads before the downstream's verdicts mean anything. This script fine-tunes the case study's
upstream from its pretrained checkpoint with the disparity loss and with the depth loss on the
street world's training scenes, runs SGBM and the oracle on the evaluation scenes (``--split``:
``val`` for design choices, ``test`` for the gate itself), and prints:

* the gate table: per class (car, pedestrian) and distance bin, the median per-object depth
  error and the share of objects off by more than 1 m (:mod:`entangle.analysis.object_errors`),
  with the verdict "the learned stereo must beat SGBM on object pixels for both classes up to
  40 m";
* whole-image EPE and D1 of every system;
* with two or more seeds, the per-bin paired difference depth loss − disparity loss of the
  median object error over seeds, with its interval;
* for the refiner, what fine-tuning did on the objects: how far each loss moved the answer from
  its start (the untrained refiner, or the checkpoint) and how far apart the two losses ended;
* the costs: pretraining, fine-tuning per model, prediction per scene (with the load average).

``--upstream hybrid`` (the default, the pipeline's): SGBM plus the learned residual refiner
(:mod:`entangle.models.stereo_refiner`), from ``datasets/checkpoints/refiner_pretrained.pt``.
``--upstream network``: the end-to-end network (the GPU pipeline), from
``datasets/checkpoints/stereo_pretrained.pt``::

    python experiments/stereo_gate.py --split val                      # design, on validation
    python experiments/stereo_gate.py --seeds 0 1 2                    # the gate, test split
    python experiments/stereo_gate.py --upstream network --train 16 --test 16 --epochs 1

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

from entangle.analysis.object_errors import (foreground_mask, format_gate_table, gate_table,
                                             gate_verdict, paired_bin_differences)
from entangle.data.flying import FlyingSource
from entangle.data.world_source import WorldSource
from entangle.executor import check_seeds
from entangle.models.stereo import ClassicalStereo, OracleStereo, StereoCheckpoint, StereoNet, file_sha256
from entangle.models.stereo_refiner import RefinerCheckpoint, StereoRefiner

#: KITTI's D1 outlier threshold (3 px at 1242 px width) scaled to the world's width, and 5 %
D1_PX_AT_KITTI_WIDTH, D1_REL = 3.0, 0.05

#: the shipped pretrained models (see datasets/world.md, "Stereo on this world")
CHECKPOINTS = {"hybrid": "datasets/checkpoints/refiner_pretrained.pt",
               "network": "datasets/checkpoints/stereo_pretrained.pt"}


def _timed(fn, *a, **kw):
    start = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - start


def _digest(path: str, given: str | None) -> str:
    """The expected digest: given, else the sidecar's (``.json`` beside the file), else the file's."""
    if given:
        return given
    side = Path(path).with_suffix(".json")
    return json.loads(side.read_text())["sha256"] if side.is_file() else file_sha256(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", choices=("hybrid", "network"), default="hybrid")
    parser.add_argument("--root", default=None, help="a KITTI-layout world folder (default: render it)")
    parser.add_argument("--scenes", type=int, default=1200, help="scenes of the world to render")
    parser.add_argument("--world-seed", type=int, default=0)
    parser.add_argument("--world", default="{}", help="JSON overrides of the rendered world's "
                        "WorldConfig, e.g. '{\"splits\": [0.25, 0.5, 0.25]}' for a larger "
                        "validation split in a fresh world (--world-seed 1)")
    parser.add_argument("--train", type=int, default=150, help="training scenes (the first of the train list)")
    parser.add_argument("--split", choices=("val", "test"), default="test",
                        help="where to evaluate: val for design choices, test for the gate")
    parser.add_argument("--test", type=int, default=500, help="evaluation scenes (the first of --split)")
    parser.add_argument("--checkpoint", default=None, help="pretrained model (default: the shipped one "
                        "of --upstream); 'none' pretrains the network here, or starts the refiner at SGBM")
    parser.add_argument("--sha256", default=None, help="its expected digest (default: the sidecar's)")
    parser.add_argument("--pretrain-images", type=int, default=3000, help="network, when pretraining here")
    parser.add_argument("--pretrain-epochs", type=int, default=1)
    parser.add_argument("--pretrain-lr", type=float, default=2e-3)
    parser.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default: the "
                        "pipeline's, 4 for the refiner, 2 for the network)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop", default="96x320", help="HxW training crops, or none")
    parser.add_argument("--fine-tune", choices=("all", "unmatched", "matched"), default="all",
                        help="refiner: what fine-tuning changes (unmatched: only the pixels SGBM "
                        "left unmatched; matched: only those it matched)")
    parser.add_argument("--object-weight", type=float, default=1.0, help="refiner: weight of the "
                        "cars' and pedestrians' own pixels in the fine-tuning loss (others weigh 1)")
    parser.add_argument("--objectives", nargs="+", default=["disparity", "depth"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--sgbm", default="{}", help="JSON parameters of OpenCV SGBM")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--net", default="{}", help="JSON options of the model (StereoRefiner: "
                        "channels, dilations; StereoNet: those of the checkpoint)")
    parser.add_argument("--out", default=None, help="write every number as JSON here")
    args = parser.parse_args()
    try:
        check_seeds(args.seeds)
    except ValueError as err:
        parser.error(f"--seeds: {err}")
    if args.upstream != "hybrid" and (args.object_weight != 1.0 or args.fine_tune != "all"):
        parser.error("--object-weight and --fine-tune are options of the hybrid's refiner")
    options = {}   # the JSON options, read before any scene is rendered or matched
    for flag in ("sgbm", "net", "world"):
        try:
            options[flag] = json.loads(getattr(args, flag))
        except json.JSONDecodeError as err:
            parser.error(f"--{flag}: not JSON ({err})")
        if not isinstance(options[flag], dict):
            parser.error(f"--{flag}: a JSON object {{...}}, got {getattr(args, flag)}")
    if options["world"]:
        if args.root is not None:
            parser.error("--world changes the rendered world; --root reads a world as it is")
        from entangle.data.world import WorldConfig
        try:
            WorldConfig.from_dict(options["world"])
        except (TypeError, ValueError) as err:
            parser.error(f"--world: {err}")
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    hybrid = args.upstream == "hybrid"
    epochs = args.epochs if args.epochs is not None else (4 if hybrid else 2)
    checkpoint = args.checkpoint or CHECKPOINTS[args.upstream]
    costs: dict[str, float] = {}
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; "
          f"torch threads: {args.threads}")

    src = WorldSource(root=args.root, n_scenes=args.scenes, seed=args.world_seed,
                      world=options["world"] or None)
    (train, test), t = _timed(lambda: (src.load("train", 0), src.load(args.split, 0)))
    costs["world: render/load (s)"] = t
    keys = ("left", "right", "calib", "baseline")
    n_tr, n_te = min(args.train, len(train["left"])), min(args.test, len(test["left"]))
    x_train = {k: train[k][:n_tr] for k in keys}
    y_train = {"disparity": train["disparity"][:n_tr], "labels": train["labels"].take(np.arange(n_tr))}
    x_test = {k: test[k][:n_te] for k in keys}
    y_test = {"disparity": test["disparity"][:n_te]}
    gt_depth = np.asarray(test["depth"][:n_te])
    labels = test["labels"].take(np.arange(n_te))
    print(f"world: {n_tr} training and {n_te} {args.split} scenes of {x_train['left'].shape[1:3]} "
          f"({src.folder()})")

    systems: dict[str, list[np.ndarray]] = {}
    scores: dict[str, list[dict]] = {}

    fg = foreground_mask(gt_depth, labels)
    gt_disp = np.asarray(y_test["disparity"], dtype=np.float32)
    d1_px = D1_PX_AT_KITTI_WIDTH * gt_disp.shape[2] / 1242.0

    def evaluate(name: str, node) -> None:
        preds, t = _timed(node.predict, x_test)
        costs[f"{name}: predict per scene (s)"] = t / n_te
        systems.setdefault(name, []).append(preds["depth"])
        score = node.score(preds, y_test)
        # KITTI 2015's table: D1 and EPE on background and foreground (car and pedestrian pixels)
        err = np.abs(preds["disparity"] - gt_disp)
        valid = gt_disp > 0
        for part, m in (("bg", valid & ~fg), ("fg", valid & fg)):
            score[f"d1_{part}"] = float(((err[m] > d1_px) & (err[m] > D1_REL * gt_disp[m])).mean())
            score[f"epe_{part}"] = float(err[m].mean())
        if hybrid and name not in ("sgbm", "bm"):
            # what the refiner does to the object pixels SGBM got right (off by < 0.5 px): a
            # loss whose quadratic core is pulled by SGBM's one-sided gross errors shifts them
            d0 = np.asarray(x_test["disparity"], dtype=np.float32)
            good = valid & fg & x_test["matched"].astype(bool) & (np.abs(d0 - gt_disp) < 0.5)
            step = preds["disparity"][good] - d0[good]
            score["good_fg_shift_mean"] = float(step.mean())
            score["good_fg_abs_step"] = float(np.abs(step).mean())
            score["good_fg_error_change"] = float((err[good] - np.abs(d0 - gt_disp)[good]).mean())
        scores.setdefault(name, []).append(score)

    sgbm = ClassicalStereo(method="sgbm", params=options["sgbm"] or None).fit(x_test, {}, seed=0)
    if hybrid:
        # the sgbm node: computed once per scene, read by every refiner
        for x, what in ((x_train, "train"), (x_test, args.split)):
            out, t = _timed(sgbm.predict, x)
            costs[f"sgbm on the {what} scenes, per scene (s)"] = t / len(x["left"])
            x.update(disparity=out["disparity"], matched=out["matched"])
    net = options["net"]
    pretrained = None
    if checkpoint != "none":
        digest = _digest(checkpoint, args.sha256)
        cls = RefinerCheckpoint if hybrid else StereoCheckpoint
        pretrained = cls(path=checkpoint, sha256=digest).fit({}, {}, seed=0)
        meta = pretrained.meta_
        costs["pretraining, as recorded in the checkpoint (s)"] = sum(meta.get("seconds", {}).values())
        print(f"pretrained: {checkpoint} ({meta.get('command', '?')}; "
              f"{meta.get('seconds')} s at load {meta.get('load_average')})")
        net = (pretrained.refiner_config() if hybrid else pretrained.network_config()).to_dict()
    elif not hybrid:
        flying = FlyingSource(n_train=args.pretrain_images, n_val=0, seed=0,
                              config={"max_disp": StereoNet(**net).max_disp})
        fl, t_r = _timed(flying.load, "train", 0)
        pre = StereoNet(objective="disparity", epochs=args.pretrain_epochs, lr=args.pretrain_lr,
                        batch_size=args.batch_size, **net)
        pretrained, t_p = _timed(pre.fit, {k: fl[k] for k in keys}, {"disparity": fl["disparity"]}, seed=0)
        costs["pretraining: render flying images (s)"] = t_r
        costs["pretraining: train (s)"] = t_p
        print(f"pretrained here on {args.pretrain_images} flying images: render {t_r:.0f} s, train {t_p:.0f} s")
    if pretrained is not None:
        evaluate("pretrained", pretrained)
    elif hybrid:
        # the refiner before any step: with blend_start, the classical answer it is built on
        evaluate("start", StereoRefiner(epochs=0, **net).fit(x_train, y_train, seed=0))

    crop = None if args.crop == "none" else [int(v) for v in args.crop.split("x")]
    for objective in args.objectives:
        for seed in args.seeds:
            cls = StereoRefiner if hybrid else StereoNet
            extra = {"object_weight": args.object_weight, "fine_tune": args.fine_tune} if hybrid else {}
            node = cls(objective=objective, epochs=epochs, lr=args.lr, batch_size=args.batch_size,
                       crop=crop, **extra, **net)
            if pretrained is not None:
                node.init_from(pretrained)
            name = f"{objective} loss"
            _, t = _timed(node.fit, x_train, y_train, seed=seed)
            costs[f"{name}: fine-tune (s)"] = t
            print(f"{name}, seed {seed}: fine-tuned in {t:.0f} s (load {os.getloadavg()[0]:.2f})", flush=True)
            evaluate(name, node)
    evaluate("sgbm", sgbm)
    evaluate("bm", ClassicalStereo(method="bm").fit(x_test, {}, seed=0))
    oracle_in = {"disparity_gt": y_test["disparity"], "calib": x_test["calib"], "baseline": x_test["baseline"]}
    systems["oracle"] = [OracleStereo().fit({}, {}, seed=0).predict(oracle_in)["depth"]]

    table = gate_table(systems, gt_depth, labels)
    learned = [n for n in systems if n.endswith("loss")]
    verdict = gate_verdict(table, learned, reference="sgbm", up_to=40.0)
    print()
    print(format_gate_table(table, verdict))
    paired = {}
    if len(args.seeds) > 1 and len(learned) == 2:
        paired = paired_bin_differences(table, learned[0], learned[1], up_to=40.0)
        print(f"\nPer-bin paired difference {learned[1]} − {learned[0]} of the median object error "
              f"over {len(args.seeds)} seeds (m, 95 % interval):\n")
        for cname, cells in paired.items():
            print(f"- {cname}: " + "; ".join(f"{b} m {c['delta_mean']:+.3f} [{c['delta_ci'][0]:+.3f}, "
                                             f"{c['delta_ci'][1]:+.3f}] ({c['better']})" for b, c in cells.items()))
    start = "pretrained" if "pretrained" in systems else "start" if "start" in systems else None
    moved = apart = {}
    if start and learned:
        # what fine-tuning did on the objects: how far each loss moved from its start, and how
        # far the two losses ended apart (same seed), beside the errors above
        moved = gate_table({n: systems[n] for n in learned}, gt_depth, labels,
                           against={n: systems[start][0] for n in learned})
        print("\n" + format_gate_table(moved, title=(
            f"How far fine-tuning moved the answer from its start ({start}) on the objects: median over "
            "objects of the median |Ẑ − Ẑ_start| on their own pixels (m; share moved by more than 1 m):")))
        if len(learned) == 2:
            pair = f"{learned[1]} vs {learned[0]}"
            apart = gate_table({pair: systems[learned[1]]}, gt_depth, labels,
                               against={pair: systems[learned[0]]})
            print("\n" + format_gate_table(apart, title=(
                "How far apart the two losses' answers are on the objects (same seed): median over "
                "objects of the median |Ẑ_depth − Ẑ_disparity| (m; share apart by more than 1 m):")))
    print(f"\nWhole image ({args.split} scenes; mean over seeds; D1 as KITTI 2015's, its 3 px scaled to "
          f"{d1_px:.2f} px at this width, and 5 %; fg: car and pedestrian pixels; holes filled):\n")
    print("| system | D1-bg (%) | D1-fg (%) | fg/bg | EPE-bg (px) | EPE-fg (px) | D1 all, 3 px (%) | depth MAE (m) |\n"
          "|---|---|---|---|---|---|---|---|")
    for name, ss in scores.items():
        mean = {k: np.mean([s[k] for s in ss]) for k in ("d1_bg", "d1_fg", "epe_bg", "epe_fg", "d1", "depth_mae")}
        print(f"| {name} | {100 * mean['d1_bg']:.2f} | {100 * mean['d1_fg']:.2f} | {mean['d1_fg'] / mean['d1_bg']:.2f} | "
              f"{mean['epe_bg']:.3f} | {mean['epe_fg']:.3f} | {100 * mean['d1']:.2f} | {mean['depth_mae']:.3f} |")
    if hybrid:
        print("\nOn the object pixels SGBM got right (matched, off by < 0.5 px): the refiner's mean "
              "step (px), mean |step| and mean change of |error| (px; negative: better):\n")
        for name, ss in scores.items():
            if "good_fg_shift_mean" in ss[0]:
                print(f"- {name}: " + ", ".join(f"{k} {np.mean([s[k] for s in ss]):+.3f}" for k in (
                    "good_fg_shift_mean", "good_fg_abs_step", "good_fg_error_change")))
    print(f"\nCosts (load average now {os.getloadavg()[0]:.2f}; {args.threads} torch thread(s)):")
    for k, v in costs.items():
        print(f"  {k}: {v:.3f}" if v < 1 else f"  {k}: {v:.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "table": table, "verdict": verdict,
                                              "paired": paired, "moved": moved, "apart": apart,
                                              "scores": scores, "costs": costs},
                                             indent=1, default=float))


if __name__ == "__main__":
    main()
