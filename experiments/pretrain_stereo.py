"""Pretrain a stereo model on flying objects and write the checkpoint the case study ships.

``--model refiner`` (the default) pretrains the hybrid upstream's residual refiner of SGBM
(:class:`entangle.models.stereo_refiner.StereoRefiner`: SGBM runs on every flying image first,
as the ``sgbm`` node does on the street) and writes it with
:func:`entangle.models.stereo_refiner.save_refiner`::

    python experiments/pretrain_stereo.py --out datasets/checkpoints/refiner_pretrained.pt

``--model network`` pretrains the end-to-end network (the GPU pipeline's upstream), as below.

The paper's PSMNet was pretrained on SceneFlow and then fine-tuned on KITTI; here the network
of :class:`entangle.models.stereo.StereoNet` is pretrained on :mod:`entangle.data.flying` (the
street camera's geometry, the world's textures, thousands of objects at every depth) with the
disparity loss, and saved with :func:`entangle.models.stereo.save_checkpoint`::

    python experiments/pretrain_stereo.py --out datasets/checkpoints/stereo_pretrained.pt

prints the file's size and SHA-256 (what a :class:`~entangle.models.stereo.StereoCheckpoint`
node is configured with), the cost (rendering, training) and the validation error on held-out
flying images, and writes the same beside the checkpoint (``.json``). The network options must match the stereo node that will be fine-tuned from it
(``init_from`` refuses another config). The checkpoint records the command, its options, the
costs and the load average in its ``meta``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from entangle.data.flying import FlyingSource
from entangle.models.stereo import ClassicalStereo, StereoNet, save_checkpoint
from entangle.models.stereo_refiner import StereoRefiner, save_refiner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="checkpoint file to write")
    parser.add_argument("--model", choices=("refiner", "network"), default="refiner",
                        help="the SGBM refiner (default) or the end-to-end network")
    parser.add_argument("--images", type=int, default=3000, help="flying-objects training images")
    parser.add_argument("--val", type=int, default=64, help="held-out flying images")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--data-seed", type=int, default=0, help="the flying set's seed")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and order")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="rendering processes")
    parser.add_argument("--net", default="{}", help="JSON options of the model (StereoRefiner: "
                        "channels, dilations; StereoNet: disp_step, refine, ...); its defaults otherwise")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0]

    net = json.loads(args.net)
    max_disp = StereoNet(**net).max_disp if args.model == "network" else 64
    source = FlyingSource(n_train=args.images, n_val=args.val, seed=args.data_seed,
                          config={"max_disp": max_disp}, workers=args.workers)
    t0 = time.perf_counter()
    train = source.load("train", 0)
    val = source.load("val", 0)
    t_render = time.perf_counter() - t0
    keys = ("left", "right", "calib", "baseline")
    x_train, x_val = ({k: d[k] for k in keys} for d in (train, val))
    t_sgbm = 0.0
    if args.model == "refiner":
        # the refiner reads SGBM's answer, computed here as the pipeline's sgbm node computes it
        t0 = time.perf_counter()
        sgbm = ClassicalStereo(method="sgbm").fit({}, {}, seed=0)
        for x in (x_train, x_val):
            out = sgbm.predict(x)
            x.update(disparity=out["disparity"], matched=out["matched"])
        t_sgbm = time.perf_counter() - t0
        node = StereoRefiner(objective="disparity", epochs=args.epochs, lr=args.lr,
                             batch_size=args.batch_size, crop=None, device="cpu", **net)
    else:
        node = StereoNet(objective="disparity", epochs=args.epochs, lr=args.lr,
                         batch_size=args.batch_size, crop=None, **net)
    t0 = time.perf_counter()
    node.fit(x_train, {"disparity": train["disparity"]}, seed=args.seed)
    t_train = time.perf_counter() - t0
    score = node.score(node.predict(x_val), {"disparity": val["disparity"]})
    if args.model == "refiner":
        base = sgbm.score(sgbm.predict({k: val[k] for k in keys}), {"disparity": val["disparity"]})
        print(f"held-out flying images, SGBM alone: EPE {base['epe']:.3f} px, D1 {100 * base['d1']:.2f} %")
    load1 = os.getloadavg()[0]
    meta = {"command": "python experiments/pretrain_stereo.py " + " ".join(sys.argv[1:]),
            "options": vars(args), "model": args.model,
            "network": (node.refiner_config() if args.model == "refiner" else node.network_config()).to_dict(),
            "data": {"source": "entangle.data.flying.FlyingSource", **source.get_params()},
            "seconds": {"render": round(t_render, 1), "sgbm": round(t_sgbm, 1), "train": round(t_train, 1)},
            "load_average": [round(load0, 2), round(load1, 2)], "threads": args.threads,
            "torch": torch.__version__, "machine": platform.machine(),
            "val": {"epe": round(score["epe"], 4), "d1": round(score["d1"], 4)},
            "train_loss": [round(float(v), 4) for v in node.train_loss_]}
    digest = (save_refiner if args.model == "refiner" else save_checkpoint)(node, args.out, **meta)
    size = os.path.getsize(args.out)
    # beside it, what a StereoCheckpoint node is configured with and how the file was made
    sidecar = Path(args.out).with_suffix(".json")
    sidecar.write_text(json.dumps({"path": args.out, "sha256": digest, "bytes": size, **meta},
                                  indent=1, sort_keys=True) + "\n")
    print(f"rendered {args.images} + {args.val} flying images in {t_render:.0f} s; trained "
          f"{args.epochs} epoch(s) of {len(train['left'])} images in {t_train:.0f} s "
          f"({len(train['left']) * args.epochs / t_train:.1f} images/s, "
          f"{args.threads} thread(s), load average {load0:.2f} -> {load1:.2f})")
    print(f"train loss per epoch: {np.round(node.train_loss_, 3).tolist()}; held-out flying images: "
          f"EPE {score['epe']:.3f} px, D1 {100 * score['d1']:.2f} %")
    print(f"wrote {args.out}: {size / 1e6:.2f} MB, sha256 {digest}")


if __name__ == "__main__":
    main()
