"""A CPU-sized frustum pedestrian detector: 2D detections on the image, then a PointNet per frustum.

It plays the role of the paper's Frustum PointNets (F-PointNet v1), at a size that trains in a
minute or two on CPU:

1. a 2D centre-heatmap detector (CenterNet) on the left image finds pedestrians' 2D boxes. It is
   trained on the ground-truth 2D boxes, so it does not depend on the depth at all, mirroring the
   fixed 2D detector of F-PointNet. It is also a node of its own, :class:`PedestrianImageDetector`:
   wired to the detector's optional ``boxes_2d`` input, it is trained once per seed and shared
   by every stereo variant from the store, instead of being retrained inside each detector;
2. the points whose projection falls inside a 2D box form its frustum. They are turned about the
   y axis so that the ray through the box centre becomes the z axis (F-PointNet's frustum frame)
   and centred on their median;
3. a segmentation PointNet (shared MLP, max-pool, per-point head) scores each point as belonging
   to the object; the weighted mean of the object points is a first centre;
4. a box PointNet on the points relative to that centre regresses the centre residual, the
   log-size ratios to the training mean and ``(sin 2 ry, cos 2 ry)``.

The PointNets are trained on frustums of the ground-truth 2D boxes with random jitter (so they
learn to cope with imperfect 2D boxes), with the object's points (inside its 3D box) as the
segmentation target. The box PointNet also predicts the **quality** of its own box: the BEV IoU
it will have with the object (trained on the IoU its box actually reaches, as IoU-Net does). A
detection's score is its 2D score times that quality, so the depth the 3D stage reads shapes the
ranking of detections, not only their overlap; its 2D box is the projection of the 3D box.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from entangle.data.labels import BOX_COLUMNS, L, LABEL_COLUMNS, PEDESTRIAN, class_rows
from entangle.models import boxes as bx
from entangle.models.centernet import centre_loss, conv_bn, draw_gaussians, peaks, random_flips
from entangle.models.detector_base import DetectorNode, check_calib, check_labels, check_points
from entangle.node import BaseNode, NotFittedError, Ragged
from entangle.training import resolve_device, train

log = logging.getLogger(__name__)

#: output stride of the 2D detector.
STRIDE = 4


# --------------------------------------------------------------------------------------------
# the 2D detector
# --------------------------------------------------------------------------------------------
class ImageNet2D(nn.Module):
    """Image ``(B, 3, H, W)`` -> heatmap logits ``(B, 1, H/4, W/4)`` and ``(log w, log h, du, dv)``."""

    def __init__(self, width: int):
        super().__init__()
        c = width
        self.body = nn.Sequential(
            conv_bn(4, c // 2, stride=2),            # (B, c/2, H/2, W/2); input + row channel
            conv_bn(c // 2, c, stride=2),            # (B, c, H/4, W/4)
            conv_bn(c, c),
            conv_bn(c, c, dilation=2),
            conv_bn(c, c, dilation=4),
            conv_bn(c, c),
        )
        self.heat = nn.Conv2d(c, 1, 1)
        self.reg = nn.Conv2d(c, 4, 1)
        nn.init.constant_(self.heat.bias, -2.19)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = image.shape
        rows = torch.linspace(-1, 1, h, device=image.device).view(1, 1, h, 1).expand(b, 1, h, w)
        f = self.body(torch.cat([image, rows], dim=1))
        return self.heat(f), self.reg(f)


def _image_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` -> float ``(N, 3, H, W)`` in [-0.5, 0.5]."""
    return torch.from_numpy(np.require(images, requirements=["C", "W"])).permute(0, 3, 1, 2).float().div_(255.0).sub_(0.5)


# --------------------------------------------------------------------------------------------
# frustums and the PointNets
# --------------------------------------------------------------------------------------------
def frustum_angle(box2d: np.ndarray, P: np.ndarray) -> np.ndarray:
    """Yaw of the ray through each 2D box centre: turning by it puts the ray on the z axis."""
    u = 0.5 * (box2d[:, 0] + box2d[:, 2])
    return np.arctan2(u - P[0, 2], P[0, 0])


def to_frustum(points: np.ndarray, angle: float) -> np.ndarray:
    """Rotate camera-frame points ``(n, 3)`` about y by ``-angle`` (the frustum frame)."""
    c, s = math.cos(angle), math.sin(angle)
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    return np.stack([c * x - s * z, y, s * x + c * z], axis=1)


def from_frustum(points: np.ndarray, angle: float) -> np.ndarray:
    """Inverse of :func:`to_frustum`."""
    return to_frustum(points, -angle)


class PointNetSeg(nn.Module):
    """Points ``(B, N, 3)`` (+ validity) -> per-point object logits ``(B, N)``."""

    def __init__(self, width: int):
        super().__init__()
        c = width
        self.local = nn.Sequential(nn.Conv1d(4, c, 1), nn.ReLU(), nn.Conv1d(c, 2 * c, 1), nn.ReLU())
        self.head = nn.Sequential(nn.Conv1d(4 * c + 1, 2 * c, 1), nn.ReLU(), nn.Conv1d(2 * c, c, 1),
                                  nn.ReLU(), nn.Conv1d(c, 1, 1))

    def forward(self, pts: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        b, n, _ = pts.shape
        x = torch.cat([pts, depth.view(b, 1, 1).expand(b, n, 1)], dim=2).transpose(1, 2)  # (B, 4, N)
        f = self.local(x)                                                  # (B, 2c, N)
        g = f.max(dim=2, keepdim=True).values.expand(-1, -1, n)            # (B, 2c, N)
        d = depth.view(b, 1, 1).expand(b, 1, n)
        return self.head(torch.cat([f, g, d], dim=1)).squeeze(1)           # (B, N)


class PointNetBox(nn.Module):
    """Centred points ``(B, N, 3)`` and object weights ``(B, N)`` -> centre (3), log-size (3),
    angle (2) and box-quality logit (1)."""

    def __init__(self, width: int):
        super().__init__()
        c = width
        self.local = nn.Sequential(nn.Conv1d(4, c, 1), nn.ReLU(), nn.Conv1d(c, 2 * c, 1), nn.ReLU(),
                                   nn.Conv1d(2 * c, 4 * c, 1), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(4 * c + 1, 2 * c), nn.ReLU(), nn.Linear(2 * c, c), nn.ReLU(),
                                  nn.Linear(c, 9))

    def forward(self, pts: torch.Tensor, weight: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        x = torch.cat([pts, weight.unsqueeze(2)], dim=2).transpose(1, 2)   # (B, 4, N)
        # points unlikely to be the object are pushed down before pooling
        f = self.local(x) * weight.unsqueeze(1)                            # (B, 4c, N)
        g = f.max(dim=2).values                                            # (B, 4c)
        return self.head(torch.cat([g, depth.view(-1, 1)], dim=1))         # (B, 9)


class FrustumNet(nn.Module):
    """Segmentation PointNet, weighted centroid, then box PointNet (F-PointNet v1 without T-Net)."""

    def __init__(self, width: int):
        super().__init__()
        self.seg = PointNetSeg(width)
        self.box = PointNetBox(width)

    def forward(self, pts: torch.Tensor, depth: torch.Tensor):
        logits = self.seg(pts, depth)                                      # (B, N)
        w = torch.sigmoid(logits)
        centre0 = (pts * w.unsqueeze(2)).sum(1) / w.sum(1, keepdim=True).clamp(min=1e-3)  # (B, 3)
        out = self.box(pts - centre0.unsqueeze(1), w, depth)               # (B, 9)
        return logits, centre0, out


def _sample_points(pts: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Exactly ``n`` rows of ``pts``: a random subset, or all of them repeated."""
    if len(pts) >= n:
        return pts[rng.choice(len(pts), n, replace=False)]
    return pts[np.concatenate([np.arange(len(pts)), rng.integers(0, len(pts), n - len(pts))])]


class _Frustum:
    """One frustum's normalised points: frame angle, median shift and the sampled points."""

    def __init__(self, points: np.ndarray, box2d: np.ndarray, P: np.ndarray, n: int,
                 rng: np.random.Generator):
        self.angle = float(frustum_angle(box2d[None], P)[0])
        f = to_frustum(points, self.angle)
        self.shift = np.median(f, axis=0)
        self.points = _sample_points(f - self.shift, n, rng).astype(np.float32)   # (n, 3)


def _in_box(uv: np.ndarray, box2d: np.ndarray) -> np.ndarray:
    return (uv[:, 0] >= box2d[0]) & (uv[:, 0] <= box2d[2]) & (uv[:, 1] >= box2d[1]) & (uv[:, 1] <= box2d[3])


class PedestrianImageDetector(BaseNode):
    """The pedestrian detector's image stage as a node: left image -> pedestrians' 2D boxes.

    Input ``image`` ((N, H, W, 3) uint8); target ``labels``; output ``boxes_2d``, a Ragged of
    ``(x1, y1, x2, y2, score)`` rows per image. Its per-sample loss is one number per ground-truth
    pedestrian, ``1 - max_j IoU_2d(object, det_j) * score_j``; its metric is the share of moderate
    pedestrians found (2D IoU > 0.5).
    """

    input_kinds = {"image": "image"}
    target_kinds = {"labels": "labels"}
    output_kinds = {"boxes_2d": "boxes_2d"}
    metric = "recall_2d_moderate"
    higher_is_better = True
    version = "1"
    execution_params = ("device",)

    def __init__(self, *, width_2d: int = 24, epochs_2d: int = 10, lr_2d: float = 2e-3,
                 batch_size_2d: int = 8, max_detections: int = 20, score_threshold: float = 0.1,
                 nms_iou: float = 0.5, weight_decay: float = 1e-4, flip: bool = True, device: str = "auto"):
        self.width_2d = width_2d
        self.epochs_2d = epochs_2d
        self.lr_2d = lr_2d
        self.batch_size_2d = batch_size_2d
        self.max_detections = max_detections
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.weight_decay = weight_decay
        self.flip = flip
        self.device = device

    # -- training and detection ----------------------------------------------------------------
    def _targets_2d(self, labels: list[np.ndarray], flips: np.ndarray, shape: tuple[int, int]):
        h, w = shape[0] // STRIDE, shape[1] // STRIDE
        b = len(labels)
        heat = np.zeros((b, 1, h, w), dtype=np.float32)
        reg = np.zeros((b, 4, h, w), dtype=np.float32)
        mask = np.zeros((b, 1, h, w), dtype=np.float32)
        for i, lab in enumerate(labels):
            ped = lab[lab[:, L["cls"]] == PEDESTRIAN]
            if len(ped) == 0:
                continue
            x1, y1, x2, y2 = (ped[:, L[k]].copy() for k in ("x1", "y1", "x2", "y2"))
            if flips[i]:
                x1, x2 = shape[1] - 1 - x2, shape[1] - 1 - x1
            cu, cv = 0.5 * (x1 + x2) / STRIDE, 0.5 * (y1 + y2) / STRIDE
            bw, bh = np.maximum(x2 - x1, 1.0) / STRIDE, np.maximum(y2 - y1, 1.0) / STRIDE
            sig = np.maximum(0.5, bw / 3.0)
            heat[i, 0] = draw_gaussians((h, w), np.stack([cv, cu], 1), sig)
            for k in range(len(ped)):
                r, c = int(cv[k]), int(cu[k])
                if 0 <= r < h and 0 <= c < w:
                    reg[i, :, r, c] = [np.log(bw[k]), np.log(bh[k]), cu[k] - c, cv[k] - r]
                    mask[i, 0, r, c] = 1.0
        return heat, reg, mask

    def _fit_2d(self, images: np.ndarray, labels: Ragged, seed: int, dev: torch.device) -> ImageNet2D:
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        net = ImageNet2D(self.width_2d)
        label_list = [np.asarray(labels[i], dtype=np.float64) for i in range(len(images))]

        def batch_loss(net, idx, step):
            # the flips come from the generator of the batch order, after it
            x, flips = random_flips(_image_tensor(images[idx]), rng, self.flip)   # (B, 3, H, W)
            targets = (torch.from_numpy(a).to(dev) for a in
                       self._targets_2d([label_list[i] for i in idx], flips, images.shape[1:3]))
            heat, reg = net(x.to(dev))
            return centre_loss(heat, reg, *targets)

        trained = train(net, batch_loss, epochs=self.epochs_2d, n=len(images),
                        batch_size=self.batch_size_2d, rng=rng, seed=seed, optimizer="adamw",
                        lr=self.lr_2d, weight_decay=self.weight_decay, schedule="onecycle",
                        schedule_every="step", device=dev, name="Pedestrian 2D")
        self.train_loss_2d_ = trained.history
        self.net_ = trained.module
        return self.net_

    @torch.no_grad()
    def _detect_2d(self, images: np.ndarray) -> list[np.ndarray]:
        """Per image, 2D detections ``(k, 5)`` = ``(x1, y1, x2, y2, score)``."""
        out = []
        h_img, w_img = images.shape[1:3]
        for start in range(0, len(images), 16):
            heat, reg = self.net_(_image_tensor(images[start:start + 16]))
            scores, r, c = peaks(torch.sigmoid(heat), self.max_detections)
            for b in range(len(heat)):
                keep = scores[b] >= self.score_threshold
                rr, cc = r[b][keep].numpy(), c[b][keep].numpy()
                g = reg[b][:, r[b][keep], c[b][keep]].numpy().astype(np.float64)   # (4, k)
                bw, bh = np.exp(np.clip(g[0], -3, 6)) * STRIDE, np.exp(np.clip(g[1], -3, 6)) * STRIDE
                cu, cv = (cc + g[2]) * STRIDE, (rr + g[3]) * STRIDE
                boxes = np.stack([cu - bw / 2, cv - bh / 2, cu + bw / 2, cv + bh / 2], 1)
                boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w_img - 1)
                boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h_img - 1)
                s = scores[b][keep].numpy().astype(np.float64)
                out.append(_nms_2d(boxes, s, self.nms_iou))
        return out

    # -- the node contract -----------------------------------------------------------------
    def fit(self, inputs: Mapping[str, Any], targets: Mapping[str, Any], *, seed: int) -> "PedestrianImageDetector":
        images = _check_images(inputs["image"])
        labels = check_labels(targets["labels"], len(images))
        lv = np.asarray(labels.values).reshape(-1, len(LABEL_COLUMNS))
        if not np.any(lv[:, L["cls"]] == PEDESTRIAN):
            raise ValueError("PedestrianImageDetector.fit: the training labels hold no Pedestrian rows")
        self._fit_2d(images, labels, seed, resolve_device(self.device))
        return self

    def check_is_fitted(self) -> None:
        if not hasattr(self, "net_"):
            raise NotFittedError("PedestrianImageDetector is not fitted; call fit first")

    def predict(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        self.check_is_fitted()
        return {"boxes_2d": Ragged.from_list(self._detect_2d(_check_images(inputs["image"])), width=5)}

    def loss_items(self, targets: Mapping[str, Any]) -> int:
        """The per-object loss covers every ground-truth pedestrian."""
        return int(len(class_rows(targets["labels"], PEDESTRIAN)))

    @staticmethod
    def _frames(predictions: Mapping[str, Any], targets: Mapping[str, Any]):
        """(ground-truth pedestrian rows, 2D detections) of every frame that has pedestrians."""
        dets = predictions["boxes_2d"]
        for i, lab in enumerate(check_labels(targets["labels"], len(dets))):
            g = np.asarray(lab, dtype=np.float64)
            g = g[g[:, L["cls"]] == PEDESTRIAN] if len(g) else g.reshape(0, len(LABEL_COLUMNS))
            if len(g):
                yield g, np.asarray(dets[i], dtype=np.float64).reshape(-1, 5)

    def detected(self, predictions: Mapping[str, Any], targets: Mapping[str, Any],
                 min_overlap: float) -> np.ndarray:
        """Per ground-truth pedestrian (the loss's items): a 2D detection overlaps it at IoU
        ``>= min_overlap``."""
        out = [bx.box2d_overlap(g[:, 8:12], d[:, :4]).max(axis=1) >= min_overlap if len(d)
               else np.zeros(len(g), dtype=bool) for g, d in self._frames(predictions, targets)]
        return np.concatenate(out) if out else np.zeros(0, dtype=bool)

    def loss(self, predictions: Mapping[str, Any], targets: Mapping[str, Any]) -> np.ndarray:
        """One loss per ground-truth pedestrian (label-row order): ``1 - max IoU_2d x score``."""
        out = [1.0 - (bx.box2d_overlap(g[:, 8:12], d[:, :4]) * d[None, :, 4]).max(axis=1) if len(d)
               else np.ones(len(g)) for g, d in self._frames(predictions, targets)]
        return np.concatenate(out) if out else np.zeros(0)

    def score(self, predictions: Mapping[str, Any], targets: Mapping[str, Any]) -> dict[str, float]:
        """Recall of moderate pedestrians at 2D IoU > 0.5, and detections per image."""
        dets = predictions["boxes_2d"]
        labels = check_labels(targets["labels"], len(dets))
        hit = total = 0
        for i, lab in enumerate(labels):
            g = np.asarray(lab, dtype=np.float64).reshape(-1, len(LABEL_COLUMNS))
            g = g[(g[:, L["cls"]] == PEDESTRIAN) & (g[:, L["difficulty"]] >= 0) & (g[:, L["difficulty"]] <= 1)]
            d = np.asarray(dets[i], dtype=np.float64).reshape(-1, 5)
            total += len(g)
            if len(g) and len(d):
                hit += int((bx.box2d_overlap(g[:, 8:12], d[:, :4]).max(axis=1) > 0.5).sum())
        return {"recall_2d_moderate": hit / total if total else float("nan"),
                "detections_per_image": float(len(dets.values)) / max(len(dets), 1)}

    def state_dict(self) -> dict[str, Any]:
        self.check_is_fitted()
        state = {f"net.{k}": v.detach().cpu().clone() for k, v in self.net_.state_dict().items()}
        state["train_loss_2d_"] = np.asarray(self.train_loss_2d_, dtype=np.float64)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> "PedestrianImageDetector":
        net = ImageNet2D(self.width_2d)
        net.load_state_dict({k[4:]: torch.as_tensor(v) for k, v in state.items() if k.startswith("net.")})
        self.net_ = net.eval()
        self.train_loss_2d_ = np.asarray(state["train_loss_2d_"], dtype=np.float64)
        return self


def _check_images(images: Any) -> np.ndarray:
    """``images`` as an (N, H, W, 3) uint8 array whose sides fit the 2D detector's stride."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"image must be (N, H, W, 3) uint8, got {images.shape} {images.dtype}")
    if images.shape[1] % STRIDE or images.shape[2] % STRIDE:
        raise ValueError(f"image height and width must be multiples of {STRIDE}, got {images.shape[1:3]}")
    return images


class PedestrianDetector(DetectorNode):
    """Frustum pedestrian detector on the left image and the pseudo-LiDAR points (module docstring).

    Inputs ``points`` (Ragged of (n, 3) camera-frame points), ``image`` ((N, H, W, 3) uint8 left
    images) and ``calib`` ((N, 3, 4) P2); target ``labels``; output ``boxes``. With the optional
    input ``boxes_2d`` (a :class:`PedestrianImageDetector`'s output) the frustums come from those
    2D boxes and the detector trains no image stage of its own (its ``*_2d`` parameters unused).
    """

    object_class = PEDESTRIAN
    input_kinds = {"points": "points", "image": "image", "calib": "calib", "boxes_2d": "boxes_2d"}
    optional_inputs = ("boxes_2d",)
    output_kinds = {"boxes": "boxes", "image_size": "array", "n_points": "array"}
    version = "3"
    execution_params = ("device",)

    def __init__(self, *, width_2d: int = 24, epochs_2d: int = 10, lr_2d: float = 2e-3,
                 batch_size_2d: int = 8, width_3d: int = 32, epochs_3d: int = 15, lr_3d: float = 2e-3,
                 batch_size_3d: int = 32, n_points: int = 128, jitter: float = 0.1,
                 copies_per_object: int = 2, max_range: float = 60.0, max_detections: int = 20,
                 score_threshold: float = 0.1, nms_iou: float = 0.5, min_frustum_points: int = 5,
                 weight_decay: float = 1e-4, flip: bool = True, device: str = "auto"):
        self.width_2d = width_2d
        self.epochs_2d = epochs_2d
        self.lr_2d = lr_2d
        self.batch_size_2d = batch_size_2d
        self.width_3d = width_3d
        self.epochs_3d = epochs_3d
        self.lr_3d = lr_3d
        self.batch_size_3d = batch_size_3d
        self.n_points = n_points
        self.jitter = jitter
        self.copies_per_object = copies_per_object
        self.max_range = max_range
        self.max_detections = max_detections
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.min_frustum_points = min_frustum_points
        self.weight_decay = weight_decay
        self.flip = flip
        self.device = device

    # -- frustum PointNet ------------------------------------------------------------------
    def _frustum_training_set(self, points: Ragged, labels: Ragged, P: np.ndarray,
                              rng: np.random.Generator):
        """Jittered GT-box frustums: points (M, n, 3), depth feature, seg targets, box targets."""
        pts_all, depth_f, seg_t, box_t = [], [], [], []
        for i in range(len(points)):
            lab = np.asarray(labels[i], dtype=np.float64)
            ped = lab[lab[:, L["cls"]] == PEDESTRIAN]
            cloud = np.asarray(points[i], dtype=np.float64)
            if len(ped) == 0 or len(cloud) == 0:
                continue
            uv = bx.project_points(cloud, P[i])
            for obj in ped:
                box7 = obj[1:8]
                b2 = obj[8:12]
                w, h = b2[2] - b2[0], b2[3] - b2[1]
                for _ in range(self.copies_per_object):
                    j = rng.normal(0.0, self.jitter, 4) * np.array([w, h, w, h])
                    jb = b2 + j
                    sel = _in_box(uv, jb)
                    if sel.sum() < self.min_frustum_points:
                        continue
                    fr = _Frustum(cloud[sel], jb, P[i], self.n_points, rng)
                    # targets in the normalised frustum frame
                    world = from_frustum(fr.points.astype(np.float64) + fr.shift, fr.angle)
                    inside = _points_in_box(world, box7, margin=0.1)
                    centre = to_frustum(np.array([[box7[0], box7[1] - box7[3] / 2, box7[2]]]), fr.angle)[0] - fr.shift
                    ry_f = box7[6] - fr.angle     # yaw in the frustum frame
                    pts_all.append(fr.points)
                    depth_f.append(fr.shift[2] / 30.0)
                    seg_t.append(inside.astype(np.float32))
                    box_t.append(np.concatenate([centre, np.log(box7[3:6] / self.mean_size_),
                                                 [np.sin(2 * ry_f), np.cos(2 * ry_f)]]))
        if not pts_all:
            raise ValueError("PedestrianDetector.fit: no pedestrian frustum holds enough points "
                             f"(min_frustum_points={self.min_frustum_points})")
        return (torch.from_numpy(np.stack(pts_all)), torch.tensor(depth_f, dtype=torch.float32),
                torch.from_numpy(np.stack(seg_t)), torch.tensor(np.stack(box_t), dtype=torch.float32))

    def _fit_3d(self, points: Ragged, labels: Ragged, P: np.ndarray, seed: int, dev: torch.device) -> FrustumNet:
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed + 1)
        pts, depth, seg_t, box_t = self._frustum_training_set(points, labels, P, rng)
        net = FrustumNet(self.width_3d)

        mean_size = self.mean_size_

        def batch_loss(net, idx, step):
            p, d, st, bt = (a[idx].to(dev) for a in (pts, depth, seg_t, box_t))
            logits, centre0, out = net(p, d)
            l_seg = F.binary_cross_entropy_with_logits(logits, st)
            centre = centre0 + out[:, :3]
            l_centre = F.smooth_l1_loss(centre, bt[:, :3], beta=0.1) + 0.5 * F.smooth_l1_loss(centre0, bt[:, :3], beta=0.1)
            l_size = F.smooth_l1_loss(out[:, 3:6], bt[:, 3:6], beta=0.1)
            l_angle = F.smooth_l1_loss(out[:, 6:8], bt[:, 6:8], beta=0.1)
            # box quality: the BEV IoU this box reaches with its object (a target, not a path for
            # gradients: the box is trained by the terms above)
            iou = torch.from_numpy(_frame_bev_iou(centre.detach().cpu().numpy(), out[:, 3:8].detach().cpu().numpy(),
                                                  bt.cpu().numpy(), mean_size)).float().to(dev)
            l_quality = F.binary_cross_entropy_with_logits(out[:, 8], iou)
            return l_seg + 2.0 * l_centre + l_size + 0.5 * l_angle + 0.5 * l_quality

        trained = train(net, batch_loss, epochs=self.epochs_3d, n=len(pts),
                        batch_size=self.batch_size_3d, seed=seed, optimizer="adamw", lr=self.lr_3d,
                        weight_decay=self.weight_decay, schedule="onecycle", schedule_every="step",
                        device=dev, name="Pedestrian frustum")
        self.train_loss_3d_ = trained.history
        self.n_frustums_ = len(pts)
        return trained.module

    # -- the node contract -----------------------------------------------------------------
    def _require_fitted(self) -> None:
        if not hasattr(self, "frustum_net_"):
            raise NotFittedError("PedestrianDetector is not fitted; call fit first")

    def _check_inputs(self, inputs: Mapping[str, Any]) -> tuple[Ragged, np.ndarray, np.ndarray]:
        points = check_points(inputs["points"])
        images = _check_images(inputs["image"])
        if len(images) != len(points):
            raise ValueError(f"image has {len(images)} images but points has {len(points)}")
        boxes_2d = inputs.get("boxes_2d")
        if boxes_2d is not None and (not isinstance(boxes_2d, Ragged) or len(boxes_2d) != len(points)):
            raise ValueError(f"boxes_2d must be a Ragged of (x1, y1, x2, y2, score) rows for each of the "
                             f"{len(points)} images, got {type(boxes_2d).__name__} of length {len(boxes_2d)}")
        P = check_calib(inputs["calib"], len(points))
        return points, images, P

    def _image_stage(self) -> PedestrianImageDetector:
        """The built-in image stage, configured from this detector's ``*_2d`` parameters."""
        return PedestrianImageDetector(
            width_2d=self.width_2d, epochs_2d=self.epochs_2d, lr_2d=self.lr_2d,
            batch_size_2d=self.batch_size_2d, max_detections=self.max_detections,
            score_threshold=self.score_threshold, nms_iou=self.nms_iou,
            weight_decay=self.weight_decay, flip=self.flip, device=self.device)

    def _in_range(self, points: Ragged) -> list[np.ndarray]:
        out = []
        for p in points:
            p = np.asarray(p, dtype=np.float64)
            out.append(p[(p[:, 2] > 0) & (p[:, 2] <= self.max_range)] if len(p) else p.reshape(0, 3))
        return out

    def fit(self, inputs: Mapping[str, Any], targets: Mapping[str, Any], *, seed: int) -> "PedestrianDetector":
        points, images, P = self._check_inputs(inputs)
        labels = check_labels(targets["labels"], len(points))
        lv = np.asarray(labels.values, dtype=np.float64).reshape(-1, len(LABEL_COLUMNS))
        peds = lv[lv[:, L["cls"]] == PEDESTRIAN]
        if len(peds) == 0:
            raise ValueError("PedestrianDetector.fit: the training labels hold no Pedestrian rows")
        self.mean_size_ = peds[:, [L["h"], L["w"], L["l"]]].mean(axis=0)
        dev = resolve_device(self.device)
        self.image_stage_ = None
        if inputs.get("boxes_2d") is None:
            self.image_stage_ = self._image_stage()
            self.image_stage_._fit_2d(images, labels, seed, dev)
        clouds = Ragged.from_list(self._in_range(points), width=3)
        self.frustum_net_ = self._fit_3d(clouds, labels, P, seed, dev)
        return self

    @torch.no_grad()
    def predict(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        self._require_fitted()
        points, images, P = self._check_inputs(inputs)
        clouds = self._in_range(points)
        n_points = np.array([len(c) for c in clouds], dtype=np.int64)
        if np.any(n_points == 0):
            log.warning("PedestrianDetector: %d of %d clouds have no point in range (no detections there)",
                        int((n_points == 0).sum()), len(n_points))
        if inputs.get("boxes_2d") is not None:
            dets2d = [np.asarray(b, dtype=np.float64).reshape(-1, 5) for b in inputs["boxes_2d"]]
        elif self.image_stage_ is not None:
            dets2d = self.image_stage_._detect_2d(images)
        else:
            raise ValueError("PedestrianDetector was fitted with boxes_2d from an image detector node; "
                             "predict needs them too (wire 'boxes_2d')")
        rng = np.random.default_rng(0)        # fixed: the same inputs give the same boxes
        image_size = np.tile(np.asarray(images.shape[1:3], dtype=np.int64), (len(images), 1))
        frustums, owners, scores = [], [], []
        for i, (cloud, d2) in enumerate(zip(clouds, dets2d)):
            if len(cloud) == 0 or len(d2) == 0:
                continue
            uv = bx.project_points(cloud, P[i])
            for row in d2:
                sel = _in_box(uv, row[:4])
                if sel.sum() < self.min_frustum_points:
                    continue
                frustums.append(_Frustum(cloud[sel], row[:4], P[i], self.n_points, rng))
                owners.append(i)
                scores.append(row[4])
        rows: list[list[np.ndarray]] = [[] for _ in range(len(images))]
        net = self.frustum_net_
        for start in range(0, len(frustums), 256):
            chunk = frustums[start:start + 256]
            pts = torch.from_numpy(np.stack([f.points for f in chunk]))
            depth = torch.tensor([f.shift[2] / 30.0 for f in chunk], dtype=torch.float32)
            _, centre0, out = net(pts, depth)
            centre = (centre0 + out[:, :3]).numpy().astype(np.float64)
            quality = torch.sigmoid(out[:, 8]).numpy().astype(np.float64)
            out = out.numpy().astype(np.float64)
            for k, f in enumerate(chunk):
                i = owners[start + k]
                c = from_frustum((centre[k] + f.shift)[None], f.angle)[0]
                h, w, l = self.mean_size_ * np.exp(np.clip(out[k, 3:6], -1, 1))
                ry = 0.5 * np.arctan2(out[k, 6], out[k, 7]) + f.angle
                box7 = np.array([[c[0], c[1] + h / 2, c[2], h, w, l, ry]])
                box2d = bx.project_boxes(box7, P[i], tuple(image_size[i]))
                rows[i].append(self._rows(PEDESTRIAN, box7, box2d, np.array([scores[start + k] * quality[k]])))
        per_image = [np.concatenate(r) if r else np.zeros((0, len(BOX_COLUMNS)), np.float32) for r in rows]
        return {"boxes": Ragged.from_list(per_image, width=len(BOX_COLUMNS)),
                "image_size": image_size, "n_points": n_points}

    def state_dict(self) -> dict[str, Any]:
        self._require_fitted()
        state = {f"frustum.{k}": v.detach().cpu().clone() for k, v in self.frustum_net_.state_dict().items()}
        if self.image_stage_ is not None:
            state.update(self.image_stage_.state_dict())
        state["mean_size_"] = np.asarray(self.mean_size_, dtype=np.float64)
        state["train_loss_3d_"] = np.asarray(self.train_loss_3d_, dtype=np.float64)
        state["n_frustums_"] = np.asarray(self.n_frustums_)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> "PedestrianDetector":
        fnet = FrustumNet(self.width_3d)
        fnet.load_state_dict({k[8:]: torch.as_tensor(v) for k, v in state.items() if k.startswith("frustum.")})
        self.frustum_net_ = fnet.eval()
        self.image_stage_ = (self._image_stage().load_state_dict(state)
                             if any(k.startswith("net.") for k in state) else None)
        self.mean_size_ = np.asarray(state["mean_size_"], dtype=np.float64)
        self.train_loss_3d_ = np.asarray(state["train_loss_3d_"], dtype=np.float64)
        self.n_frustums_ = int(np.asarray(state["n_frustums_"]))
        return self


def _frame_bev_iou(centre: np.ndarray, out: np.ndarray, target: np.ndarray, mean_size: np.ndarray) -> np.ndarray:
    """BEV IoU of predicted and target boxes in one frustum frame (rows matched), from the box
    head's centre ``(n, 3)``, log-size ratios and ``(sin 2ry, cos 2ry)`` ``out[:, :5]`` and the
    targets' ``(centre, log-size ratios, sin 2ry, cos 2ry)`` ``(n, 8)``."""
    def boxes(c: np.ndarray, logs: np.ndarray, sc: np.ndarray) -> np.ndarray:
        h, w, l = (mean_size * np.exp(np.clip(logs, -1, 1))).T
        ry = 0.5 * np.arctan2(sc[:, 0], sc[:, 1])
        return np.column_stack([c[:, 0], c[:, 1], c[:, 2], h, w, l, ry]).astype(np.float64)
    pred = boxes(centre.astype(np.float64), out[:, :3], out[:, 3:5])
    true = boxes(target[:, :3].astype(np.float64), target[:, 3:6], target[:, 6:8])
    return np.clip(bx.bev_iou(pred, true, pairwise=True), 0.0, 1.0)


def _points_in_box(points: np.ndarray, box7: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """Mask of camera-frame points inside a 3D box ``(x, y, z, h, w, l, ry)`` grown by ``margin``."""
    x, y, z, h, w, l, ry = box7
    dx, dz = points[:, 0] - x, points[:, 2] - z
    c, s = math.cos(ry), math.sin(ry)
    along = c * dx - s * dz          # inverse of the yaw used by bev_corners
    across = s * dx + c * dz
    return ((np.abs(along) <= l / 2 + margin) & (np.abs(across) <= w / 2 + margin)
            & (points[:, 1] <= y + margin) & (points[:, 1] >= y - h - margin))


def _nms_2d(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy 2D NMS; returns the kept ``(k, 5)`` rows ``(x1, y1, x2, y2, score)``, best first."""
    order = np.argsort(-scores, kind="stable")
    boxes, scores = boxes[order], scores[order]
    if len(boxes) == 0:
        return np.zeros((0, 5))
    ov = bx.box2d_overlap(boxes, boxes)
    keep = []
    suppressed = np.zeros(len(boxes), dtype=bool)
    for i in range(len(boxes)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= ov[i] > iou
    keep = np.asarray(keep)
    return np.column_stack([boxes[keep], scores[keep]])
