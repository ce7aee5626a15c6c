"""Benchmark the car and pedestrian detectors with the oracle upstream (ground-truth depth).

Renders (once, cached under ``datasets/generated/``) or reads a KITTI-layout world, turns the
ground-truth depth into pseudo-LiDAR, trains both detectors on the train scenes and reports on
held-out scenes: training and prediction times, KITTI APs (BEV/3D, strict/loose IoU, per
difficulty and near), the 2D recall of the pedestrian detector's image stage, and a trivial
detector (one mean-sized box per image at the training objects' mean position) as the floor.

    python experiments/bench_detectors.py                 # 400 train / 200 test scenes
    python experiments/bench_detectors.py --train 64 --test 32 --ped '{"epochs_2d": 4}'   # a quick look
    python experiments/bench_detectors.py --world case-study --train 150   # the case study's world: its
        # first 150 train scenes, scored on its 120 validation scenes (where detector sizes are chosen)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from entangle.data.kitti import KittiDataset
from entangle.data.labels import BOX_COLUMNS, CAR, L, PEDESTRIAN
from entangle.data.world import write_world
from entangle.models import boxes as bx
from entangle.models.car_detector import CarDetector
from entangle.models.detection_data import detection_batch
from entangle.models.pedestrian_detector import PedestrianDetector
from entangle.models.pseudo_lidar import depth_to_points_batch
from entangle.node import Ragged

REPO = Path(__file__).resolve().parent.parent


def world_arrays(root: Path, n_scenes: int, seed: int, n_train: int, n_test: int):
    """Train and test batches from the world at ``root`` (rendered there first if missing)."""
    meta = root / "world.json"
    if not meta.exists() or json.loads(meta.read_text())["n_scenes"] < n_scenes \
            or json.loads(meta.read_text())["seed"] != seed:
        print(f"rendering {n_scenes} scenes into {root} ...", flush=True)
        write_world(root, n_scenes, seed, workers=2)
    ids = sorted(p.stem for p in (root / "training" / "image_2").glob("*.png"))[:n_scenes]
    rng = np.random.default_rng(seed)
    ids = list(rng.permutation(ids))
    train = detection_batch(KittiDataset(root, ids=ids[:n_train]))
    test = detection_batch(KittiDataset(root, ids=ids[n_train:n_train + n_test]))
    return train, test


def case_study_arrays(n_train: int, n_val: int):
    """Train and validation batches of the case study's world (conf/pipeline/fixes_that_fail.yaml:
    1,200 scenes, seed 0): its first ``n_train`` train scenes and first ``n_val`` validation ones."""
    from entangle.data.world_source import WorldSource
    source = WorldSource(n_scenes=1200, seed=0, limits={"train": n_train, "val": n_val})
    out = []
    for split in ("train", "val"):
        d = source.load(split, seed=0)
        out.append({"image": d["left"], "depth": d["depth"], "calib": d["calib"], "labels": d["labels"]})
    return tuple(out)


def trivial_boxes(test: dict, train_labels: Ragged, cls: int) -> dict:
    """One box per image: the training objects' mean box, score 1 (the floor to beat)."""
    lv = train_labels.values
    mean = lv[lv[:, L["cls"]] == cls][:, 1:8].mean(axis=0)
    n, h, w = test["image"].shape[:3]
    row = np.zeros((1, len(BOX_COLUMNS)), dtype=np.float32)
    row[0, 0], row[0, 1:8], row[0, 12] = cls, mean, 1.0
    rows = []
    for i in range(n):
        r = row.copy()
        r[0, 8:12] = bx.project_boxes(mean[None], test["calib"][i], (h, w))[0]
        rows.append(r)
    return {"boxes": Ragged.from_list(rows, width=len(BOX_COLUMNS)),
            "image_size": np.tile([h, w], (n, 1)), "n_points": np.ones(n)}


def recall_2d(node: PedestrianDetector, test: dict, iou: float = 0.5) -> float:
    """Share of moderate pedestrians that the image stage finds (2D IoU above ``iou``)."""
    dets = node.image_stage_._detect_2d(test["image"])
    hit = total = 0
    for i, lab in enumerate(test["labels"]):
        g = lab[(lab[:, L["cls"]] == PEDESTRIAN) & (lab[:, L["difficulty"]] >= 0) & (lab[:, L["difficulty"]] <= 1)]
        total += len(g)
        if len(g) and len(dets[i]):
            hit += int((bx.box2d_overlap(g[:, 8:12], dets[i][:, :4]).max(axis=1) > iou).sum())
    return hit / max(total, 1)


KEYS = ("bev_ap40_strict_easy", "bev_ap40_strict_moderate", "bev_ap40_strict_hard", "bev_ap40_strict_near",
        "bev_ap11_strict_moderate", "bev_ap40_loose_moderate", "3d_ap40_strict_moderate",
        "3d_ap40_loose_moderate", "bev_ap11_strict_near", "n_gt_moderate", "mean_object_loss")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=REPO / "datasets" / "generated" / "bench_detectors_world")
    ap.add_argument("--train", type=int, default=400)
    ap.add_argument("--test", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0, help="world seed (scenes and split)")
    ap.add_argument("--fit-seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--car", type=json.loads, default={}, help="CarDetector keyword arguments (JSON)")
    ap.add_argument("--ped", type=json.loads, default={}, help="PedestrianDetector keyword arguments (JSON)")
    ap.add_argument("--only", choices=("car", "ped"), default=None)
    ap.add_argument("--world", choices=("bench", "case-study"), default="bench",
                    help="bench: a world of its own (--root, --seed), split at random; case-study: the "
                         "case study's world, scored on its validation scenes (at most 120)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    if args.world == "case-study":
        train, test = case_study_arrays(args.train, args.test)
    else:
        train, test = world_arrays(args.root, args.train + args.test, args.seed, args.train, args.test)
    print(f"data: {len(train['image'])} train / {len(test['image'])} "
          f"{'validation' if args.world == 'case-study' else 'test'} scenes ({time.perf_counter() - t0:.1f} s)")
    t0 = time.perf_counter()
    for d in (train, test):
        d["points"] = depth_to_points_batch(d["depth"], d["calib"])
    print(f"pseudo-LiDAR from ground-truth depth: {time.perf_counter() - t0:.1f} s, "
          f"{train['points'].lengths().mean():.0f} points per image")

    results = {}
    runs = [("car", CarDetector, CAR, args.car, ("points", "calib")),
            ("ped", PedestrianDetector, PEDESTRIAN, args.ped, ("points", "calib", "image"))]
    for name, cls, obj, kw, keys in runs:
        if args.only and args.only != name:
            continue
        node = cls(**kw)
        t0, c0 = time.perf_counter(), time.process_time()
        node.fit({k: train[k] for k in keys}, {"labels": train["labels"]}, seed=args.fit_seed)
        fit_s, fit_cpu = time.perf_counter() - t0, time.process_time() - c0
        t0 = time.perf_counter()
        preds = node.predict({k: test[k] for k in keys})
        pred_s = time.perf_counter() - t0
        score = node.score(preds, {"labels": test["labels"]})
        trivial = node.score(trivial_boxes(test, train["labels"], obj), {"labels": test["labels"]})
        # CPU seconds over all threads: on a shared machine, wall time also counts waiting
        res = {"fit_s": round(fit_s, 1), "fit_cpu_s": round(fit_cpu, 1), "predict_s": round(pred_s, 1),
               **{k: round(score[k], 4) for k in KEYS},
               "trivial_bev_ap40_strict_moderate": round(trivial["bev_ap40_strict_moderate"], 4),
               "trivial_bev_ap40_loose_moderate": round(trivial["bev_ap40_loose_moderate"], 4)}
        if name == "ped":
            res["recall_2d_moderate"] = round(recall_2d(node, test), 4)
        results[name] = res
        print(f"\n{cls.__name__} ({node.get_params()})")
        for k, v in res.items():
            print(f"  {k:34s} {v}")
    print("\n" + json.dumps(results))


if __name__ == "__main__":
    main()
