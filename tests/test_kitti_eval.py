"""KITTI AP: hand-computed cases and a line-by-line port of the devkit's loops as a reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from entangle.models import boxes as bx
from entangle.data.kitti import difficulty_of, min_heights
from entangle.data.labels import B, CAR, DONTCARE, L, PEDESTRIAN, VAN, class_rows
from entangle.models.kitti_eval import DIFFICULTIES, IOU_SETS, evaluate, flat_metrics, match_objects
from entangle.node import Ragged

H = 128           # image height: the easy/moderate minimum heights become 13.65 / 8.53 px


def gt_row(cls=CAR, x=0.0, z=10.0, ry=0.0, height_px=40.0, occluded=0, truncated=0.0, u=100.0):
    h, w, l = (1.5, 1.6, 4.0) if cls in (CAR, VAN) else (1.75, 0.6, 0.8)
    return [cls, x, 1.65, z, h, w, l, ry, u, 50.0, u + 20.0, 50.0 + height_px, truncated, occluded, 0]


def det_from(g, score, **change):
    d = list(g[:12]) + [score]
    for k, v in change.items():
        d[B[k]] = v
    return d


def rag(rows_per_image, width):
    return Ragged.from_list([np.array(r, dtype=np.float64).reshape(-1, width) for r in rows_per_image],
                            width=width)


def ap(res, cls="Car", metric="bev", iou="strict", kind="R40", diff="moderate"):
    return res[cls][metric][iou][kind][diff]


def test_perfect_detections_score_one_everywhere():
    rng = np.random.default_rng(0)
    gts = [[gt_row(x=5.0 * k, z=float(rng.uniform(5, 40))) for k in range(3)] for _ in range(5)]
    dets = [[det_from(g, float(rng.uniform(0.1, 1))) for g in img] for img in gts]
    res = evaluate(rag(gts, 15), rag(dets, 13), H, classes=["Car"])
    for m in ("bev", "3d"):
        for s in IOU_SETS:
            for kind in ("R40", "R11"):
                for d in (*DIFFICULTIES, "near"):
                    assert ap(res, "Car", m, s, kind, d) == pytest.approx(1.0)
    assert res["Car"]["n_gt"]["moderate"] == 15


def test_no_detections_give_zero_and_no_objects_give_nan():
    gts = [[gt_row()], []]
    res = evaluate(rag(gts, 15), rag([[], []], 13), H, classes=["Car", "Pedestrian"])
    assert ap(res) == 0.0 and ap(res, kind="R11") == 0.0
    assert math.isnan(ap(res, "Pedestrian"))


def test_interleaved_false_positive_gives_hand_computed_ap():
    # two cars; detections by score: TP .9, FP .8, TP .7, FP .6 -> P=1 at R=.5, P=2/3 at R=1
    g1, g2 = gt_row(x=0.0), gt_row(x=10.0)
    dets = [det_from(g1, 0.9), det_from(g1, 0.8, z=30.0), det_from(g2, 0.7), det_from(g2, 0.6, z=40.0)]
    res = evaluate(rag([[g1, g2]], 15), rag([dets], 13), H, classes=["Car"])
    assert ap(res) == pytest.approx((20 * 1.0 + 20 * 2 / 3) / 40)
    assert ap(res, kind="R11") == pytest.approx((6 * 1.0 + 5 * 2 / 3) / 11)


def test_shuffled_scores_lower_ap_and_ranking_by_quality_restores_it():
    rng = np.random.default_rng(1)
    gts = [[gt_row(x=6.0 * k, z=float(rng.uniform(5, 40))) for k in range(4)] for _ in range(10)]
    good = [[det_from(g, 0.5 + 0.5 * rng.random()) for g in img] + [det_from(img[0], 0.4 * rng.random(), z=70.0)]
            for img in gts]
    res_good = evaluate(rag(gts, 15), rag(good, 13), H, classes=["Car"])
    assert ap(res_good) == pytest.approx(1.0)      # every false positive scores below every TP
    shuffled = [[d[:12] + [rng.random()] for d in img] for img in good]
    res_shuf = evaluate(rag(gts, 15), rag(shuffled, 13), H, classes=["Car"])
    assert ap(res_shuf) < 0.95


def test_duplicates_count_as_false_positives():
    g1, g2 = gt_row(x=0.0), gt_row(x=10.0)
    dets = [det_from(g1, 0.9), det_from(g1, 0.8), det_from(g2, 0.7), det_from(g2, 0.6)]
    res = evaluate(rag([[g1, g2]], 15), rag([dets], 13), H, classes=["Car"])
    assert ap(res) == pytest.approx((20 * 1.0 + 20 * 2 / 3) / 40)


def test_rotated_box_iou_decides_the_match():
    g = gt_row()
    # turn by an angle whose BEV IoU lies between the loose (0.5) and strict (0.7) thresholds
    angles = np.linspace(0, 0.8, 81)
    ious = bx.bev_iou(np.array([g[1:8]]), np.array([[*g[1:7], a] for a in angles]))[0]
    a = float(angles[np.argmin(np.abs(ious - 0.6))])
    res = evaluate(rag([[g]], 15), rag([[det_from(g, 0.9, ry=a)]], 13), H, classes=["Car"])
    assert ap(res, iou="strict") == 0.0 and ap(res, iou="loose") == 1.0
    # a yaw off by pi is the same box
    res = evaluate(rag([[g]], 15), rag([[det_from(g, 0.9, ry=math.pi)]], 13), H, classes=["Car"])
    assert ap(res, iou="strict") == 1.0


def test_ignored_objects_and_dontcare_are_neither_hits_nor_misses():
    car, van = gt_row(x=0.0), gt_row(cls=VAN, x=10.0)
    small = gt_row(x=20.0, height_px=10.0)          # hard-only: ignored in easy
    dontcare = [DONTCARE, -1000, -1000, -1000, -1, -1, -1, -10, 300, 40, 340, 60, -1, -1, -1]
    dets = [det_from(car, 0.9), det_from(van, 0.95, cls=CAR), det_from(small, 0.97),
            [CAR, 50.0, 1.65, 30.0, 1.5, 1.6, 4.0, 0.0, 305, 42, 335, 58, 0.99]]   # inside the DontCare box
    res = evaluate(rag([[car, van, small, dontcare]], 15), rag([dets], 13), H, classes=["Car"])
    assert ap(res, diff="easy") == pytest.approx(1.0)
    assert res["Car"]["n_gt"]["easy"] == 1 and res["Car"]["n_gt"]["moderate"] == 2
    # without the DontCare region, its detection is an unmatched top-scoring false positive
    res2 = evaluate(rag([[car, van, small]], 15), rag([dets], 13), H, classes=["Car"])
    assert ap(res2, diff="easy") < 1.0


def test_near_evaluation_keeps_objects_up_to_20m_regardless_of_difficulty():
    near_occluded = gt_row(z=15.0, occluded=2, truncated=0.4)
    far = gt_row(x=10.0, z=35.0)
    res = evaluate(rag([[near_occluded, far]], 15), rag([[det_from(near_occluded, 0.8)]], 13), H,
                   classes=["Car"])
    assert res["Car"]["n_gt"]["near"] == 1
    assert ap(res, diff="near") == pytest.approx(1.0)
    assert ap(res, diff="moderate") == 0.0      # the occluded one is ignored, the far one missed


def test_difficulty_uses_the_scaled_devkit_limits():
    mh = min_heights(H)
    np.testing.assert_allclose(mh, np.array([40, 25, 25]) * H / 375)
    # at KITTI's own 375 rows the limits are exact: a box exactly 40 px high is not easy (devkit: <=)
    rows = np.array([gt_row(height_px=41), gt_row(height_px=40), gt_row(height_px=26, occluded=2),
                     gt_row(height_px=25), gt_row(height_px=41, truncated=0.2)])
    assert difficulty_of(rows, 375).tolist() == [0, 1, 2, -1, 1]
    assert difficulty_of(np.array([gt_row(height_px=mh[0] + 0.5), gt_row(height_px=mh[1] + 0.5)]), H).tolist() == [0, 1]


def test_match_objects_reports_per_object_results_in_label_order():
    g1, ped, g2 = gt_row(x=0.0), gt_row(cls=PEDESTRIAN, x=3.0), gt_row(x=10.0)
    dets = [det_from(g2, 0.6, x=10.3), det_from(g2, 0.5, z=50.0)]
    labels = rag([[g1, ped, g2]], 15)
    m = match_objects(labels, rag([dets], 13), "Car")
    assert m["row"].tolist() == class_rows(labels, CAR).tolist() == [0, 2]
    assert m["matched"].tolist() == [False, True]
    expected_iou = bx.bev_iou(np.array([g2[1:8]]), np.array([dets[0][1:8]]))[0, 0]
    assert m["iou"][1] == pytest.approx(expected_iou) and m["score"][1] == pytest.approx(0.6)
    assert m["quality"][1] == pytest.approx(expected_iou * 0.6) and m["quality"][0] == 0.0


def test_flat_metrics_and_bad_input():
    g = gt_row()
    res = evaluate(rag([[g]], 15), rag([[det_from(g, 1.0)]], 13), H, classes=[CAR])
    flat = flat_metrics(res, CAR)
    assert flat["bev_ap40_strict_moderate"] == 1.0 and "3d_ap11_loose_near" in flat
    bad = det_from(g, float("nan"))
    with pytest.raises(ValueError, match="image 0, row 0, column 'score'"):
        evaluate(rag([[g]], 15), rag([[bad]], 13), H)
    with pytest.raises(ValueError, match="images"):
        evaluate(rag([[g]], 15), rag([[], []], 13), H)


# ------------------------------------------------------------------------------------------
# a plain-loop port of the devkit (kitti-object-eval-python's compute_statistics_jit and
# get_thresholds, with the C++ devkit's DontCare rule) as an independent reference
# ------------------------------------------------------------------------------------------
def _devkit_ap(gt_imgs, det_imgs, cls, diff, metric, min_overlap):
    neighbour = {CAR: VAN, PEDESTRIAN: 4}[cls]
    mh = min_heights(H)[diff]
    max_occ, max_trunc = (0, 1, 2)[diff], (0.15, 0.3, 0.5)[diff]
    iou_fn = bx.bev_iou if metric == "bev" else bx.iou_3d
    prepared = []
    n_valid = 0
    for g, d in zip(gt_imgs, det_imgs):
        g = np.asarray(g).reshape(-1, 15)
        d = np.asarray(d).reshape(-1, 13)
        ign_gt = []
        for row in g:
            height = row[L["y2"]] - row[L["y1"]]
            valid = 1 if row[0] == cls else 0 if row[0] == neighbour else -1
            ignore = row[L["occluded"]] > max_occ or row[L["truncated"]] > max_trunc or height <= mh
            if valid == 1 and not ignore:
                ign_gt.append(0)
                n_valid += 1
            elif valid == 0 or (ignore and valid == 1):
                ign_gt.append(1)
            else:
                ign_gt.append(-1)
        ign_det = []
        for row in d:
            height = abs(row[B["y2"]] - row[B["y1"]])
            ign_det.append(1 if height < mh else 0 if row[0] == cls else -1)
        dc = g[g[:, 0] == DONTCARE][:, 8:12]
        ov = iou_fn(d[:, 1:8], g[:, 1:8]) if len(d) and len(g) else np.zeros((len(d), len(g)))
        prepared.append((g, d, ign_gt, ign_det, dc, ov))

    def stats(g, d, ign_gt, ign_det, dc, ov, thresh, compute_fp):
        assigned = [False] * len(d)
        ign_thr = [compute_fp and d[j, 12] < thresh for j in range(len(d))]
        tp = fp = fn = 0
        tps = []
        for i in range(len(g)):
            if ign_gt[i] == -1:
                continue
            det_idx, valid_det, max_ov, assigned_ign = -1, -1e7, 0.0, False
            for j in range(len(d)):
                if ign_det[j] == -1 or assigned[j] or ign_thr[j]:
                    continue
                o, s = ov[j, i], d[j, 12]
                if not compute_fp and o > min_overlap and s > valid_det:
                    det_idx, valid_det = j, s
                elif compute_fp and o > min_overlap and (o > max_ov or assigned_ign) and ign_det[j] == 0:
                    max_ov, det_idx, valid_det, assigned_ign = o, j, 1, False
                elif compute_fp and o > min_overlap and valid_det == -1e7 and ign_det[j] == 1:
                    det_idx, valid_det, assigned_ign = j, 1, True
            if valid_det == -1e7 and ign_gt[i] == 0:
                fn += 1
            elif valid_det != -1e7 and (ign_gt[i] == 1 or ign_det[det_idx] == 1):
                assigned[det_idx] = True
            elif valid_det != -1e7:
                tp += 1
                tps.append(d[det_idx, 12])
                assigned[det_idx] = True
        if compute_fp:
            for j in range(len(d)):
                if not (assigned[j] or ign_det[j] in (-1, 1) or ign_thr[j]):
                    fp += 1
            if len(dc):
                o_dc = bx.box2d_overlap(d[:, 8:12], dc, criterion="a")
                for i in range(len(dc)):
                    for j in range(len(d)):
                        if assigned[j] or ign_det[j] in (-1, 1) or ign_thr[j]:
                            continue
                        if o_dc[j, i] > min_overlap:
                            assigned[j] = True
                            fp -= 1
        return tp, fp, fn, tps

    if n_valid == 0:
        return float("nan"), float("nan")
    scores = []
    for p in prepared:
        scores += stats(*p, 0.0, False)[3]
    v = sorted(scores, reverse=True)
    thresholds, current = [], 0.0
    for i, s in enumerate(v):
        l_rec = (i + 1) / n_valid
        r_rec = (i + 2) / n_valid if i < len(v) - 1 else l_rec
        if (r_rec - current) < (current - l_rec) and i < len(v) - 1:
            continue
        thresholds.append(s)
        current += 1 / 40.0
    prec = np.zeros(41)
    for t, thr in enumerate(thresholds[:41]):
        tp = fp = 0
        for p in prepared:
            a, b, _, _ = stats(*p, thr, True)
            tp, fp = tp + a, fp + b
        prec[t] = tp / (tp + fp)
    for t in range(len(thresholds)):
        prec[t] = prec[t:].max()
    return prec[1:].sum() / 40, prec[::4].sum() / 11


def _random_scene(rng, n_img=40):
    gts, dets = [], []
    for _ in range(n_img):
        g, d = [], []
        for k in range(rng.integers(0, 6)):
            cls = rng.choice([CAR, CAR, CAR, VAN, PEDESTRIAN])
            row = gt_row(cls=cls, x=8.0 * k, z=float(rng.uniform(5, 45)), ry=float(rng.uniform(-3, 3)),
                         height_px=float(rng.uniform(5, 60)), occluded=int(rng.integers(0, 3)),
                         truncated=float(rng.choice([0.0, 0.2, 0.4, 0.6])))
            g.append(row)
            for _ in range(rng.integers(0, 3)):      # 0-2 noisy detections per object
                jit = rng.normal(0, [0.15, 0.03, 0.15, 0.03, 0.03, 0.1, 0.1])
                dr = det_from(row, float(rng.random()), cls=CAR)
                dr[1:8] = list(np.asarray(row[1:8]) + jit)
                dr[B["y2"]] = row[L["y1"]] + float(rng.uniform(5, 60))
                d.append(dr)
        if rng.random() < 0.3:
            g.append([DONTCARE, -1000, -1000, -1000, -1, -1, -1, -10, 300, 40, 340, 70, -1, -1, -1])
            d.append([CAR, 90.0, 1.65, 30.0, 1.5, 1.6, 4.0, 0.0, 305, 45, 330, 65, float(rng.random())])
        for _ in range(rng.integers(0, 3)):           # pure false positives
            d.append([CAR, float(rng.uniform(-20, 20)), 1.65, float(rng.uniform(5, 45)), 1.5, 1.6, 4.0,
                      0.0, 10, 10, 40, 10 + float(rng.uniform(5, 40)), float(rng.random())])
        gts.append(g)
        dets.append(d)
    return gts, dets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_devkit_mode_matches_a_plain_port_of_the_devkit(seed):
    rng = np.random.default_rng(seed)
    gts, dets = _random_scene(rng)
    res = evaluate(rag(gts, 15), rag(dets, 13), H, classes=["Car"], recall_sampling="devkit")
    for diff, name in enumerate(DIFFICULTIES):
        for metric in ("bev", "3d"):
            for s in IOU_SETS:
                r40, r11 = _devkit_ap(gts, dets, CAR, diff, metric, IOU_SETS[s][CAR])
                got = (ap(res, "Car", metric, s, "R40", name), ap(res, "Car", metric, s, "R11", name))
                np.testing.assert_allclose(got, (r40, r11), atol=1e-12, err_msg=str((diff, metric, s)))


def test_exact_and_devkit_sampling_agree_with_many_objects():
    rng = np.random.default_rng(5)
    gts, dets = _random_scene(rng, n_img=120)
    exact = evaluate(rag(gts, 15), rag(dets, 13), H, classes=["Car"])
    devkit = evaluate(rag(gts, 15), rag(dets, 13), H, classes=["Car"], recall_sampling="devkit")
    assert exact["Car"]["n_gt"]["hard"] > 100
    for s in IOU_SETS:
        assert ap(exact, iou=s, diff="hard") == pytest.approx(ap(devkit, iou=s, diff="hard"), abs=0.03)
