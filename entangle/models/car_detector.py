"""A CPU-sized bird's-eye-view car detector on (pseudo-)LiDAR points: grid -> CNN -> centre heatmap.

It plays the role of the paper's PointRCNN, at a size that trains in a minute or two on CPU:

1. the points (camera frame) fall into a BEV grid over the x-z plane (default 0.5 m cells over
   x in [-20, 20], z in [0, 60]: the world's cars stand within 12 m of the camera's x and at
   5-60 m depth); each cell keeps its point count and the maximum, mean and
   minimum height above the sensor (``-y``), plus an occupancy flag;
2. a small CNN (two resolutions, dilated convolutions for a receptive field larger than a car)
   maps the grid to an output grid of twice the cell size with a centre heatmap and, per cell,
   the sub-cell offset of the centre, the bottom height ``y``, log-size ratios to the training
   mean and ``(sin 2 ry, cos 2 ry)`` (a box is the same box turned by pi);
3. detections are the heatmap's local maxima above ``score_threshold``, de-duplicated by BEV
   NMS, with the 2D box from projecting the 3D box with P2.

Training uses CenterNet's focal loss on Gaussian targets, an L1 loss on the regression at the
centre cells, and horizontal flips (the grid is symmetric in x).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from entangle.data.labels import BOX_COLUMNS, CAR, LABEL_COLUMNS, L
from entangle.models import boxes as bx
from entangle.models.centernet import centre_loss, conv_bn, draw_gaussians, peaks, random_flips
from entangle.models.detector_base import DetectorNode, check_calib, check_labels, check_points
from entangle.node import Ragged
from entangle.progress import progress
from entangle.training import resolve_device, train

log = logging.getLogger(__name__)

#: per-cell data channels of the BEV grid (coordinate channels are added inside the network).
GRID_CHANNELS = ("occupied", "log_count", "max_height", "mean_height", "min_height")
#: heights above the sensor (-y, metres) are mapped from [HEIGHT_LOW, HEIGHT_HIGH] to [0, 1].
HEIGHT_LOW, HEIGHT_HIGH = -2.0, 1.0
#: regression channels at each output cell.
REG_CHANNELS = ("du", "dv", "y", "log_h", "log_w", "log_l", "sin2ry", "cos2ry")


class BEVGrid:
    """The BEV raster: cell ``(row, col)`` covers ``z in [z_min + row c, ...)``, ``x in [x_min + col c, ...)``."""

    def __init__(self, x_min: float, x_max: float, z_min: float, z_max: float, cell: float):
        if x_max <= x_min or z_max <= z_min or cell <= 0:
            raise ValueError(f"empty BEV grid: x [{x_min}, {x_max}], z [{z_min}, {z_max}], cell {cell}")
        self.x_min, self.x_max, self.z_min, self.z_max, self.cell = x_min, x_max, z_min, z_max, cell
        self.nx = int(round((x_max - x_min) / cell))
        self.nz = int(round((z_max - z_min) / cell))
        if self.nx % 4 or self.nz % 4:
            raise ValueError(f"the grid must have a multiple of 4 cells per side for the network's "
                             f"two down-samplings, got {self.nz} x {self.nx}; adjust the range or cell")

    def in_range(self, points: np.ndarray) -> np.ndarray:
        """Mask of points inside the grid."""
        p = np.asarray(points)
        return ((p[:, 0] >= self.x_min) & (p[:, 0] < self.x_max)
                & (p[:, 2] >= self.z_min) & (p[:, 2] < self.z_max))

    def rasterize(self, points: np.ndarray) -> np.ndarray:
        """The grid ``(len(GRID_CHANNELS), nz, nx)`` float32 of one point cloud ``(n, 3)``."""
        p = np.asarray(points, dtype=np.float32)
        p = p[self.in_range(p)]
        n_cells = self.nz * self.nx
        out = np.zeros((len(GRID_CHANNELS), n_cells), dtype=np.float32)
        if len(p):
            col = ((p[:, 0] - self.x_min) / self.cell).astype(np.int64).clip(0, self.nx - 1)
            row = ((p[:, 2] - self.z_min) / self.cell).astype(np.int64).clip(0, self.nz - 1)
            flat = torch.from_numpy(row * self.nx + col)
            h = np.clip((-p[:, 1] - HEIGHT_LOW) / (HEIGHT_HIGH - HEIGHT_LOW), 0.0, 1.0)
            ht = torch.from_numpy(h.astype(np.float32))
            count = np.bincount(flat.numpy(), minlength=n_cells).astype(np.float32)
            occ = count > 0
            hmax = torch.zeros(n_cells).scatter_reduce_(0, flat, ht, "amax", include_self=False).numpy()
            hmin = torch.ones(n_cells).scatter_reduce_(0, flat, ht, "amin", include_self=False).numpy()
            hsum = np.bincount(flat.numpy(), weights=h, minlength=n_cells)
            out[0] = occ
            out[1] = np.log1p(count) / math.log(64.0)
            out[2] = np.where(occ, hmax, 0.0)
            out[3] = np.where(occ, hsum / np.maximum(count, 1), 0.0)
            out[4] = np.where(occ, hmin, 0.0)
        return out.reshape(len(GRID_CHANNELS), self.nz, self.nx)


class BEVNet(nn.Module):
    """Grid ``(B, C, nz, nx)`` -> heatmap logits ``(B, 1, nz/2, nx/2)`` and regression ``(B, 8, nz/2, nx/2)``."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        c, c2 = width, 2 * width
        c_in = in_channels + 2                                # + (x, z) coordinate channels
        self.stem = nn.Sequential(conv_bn(c_in, c, stride=2), conv_bn(c, c))
        self.down = nn.Sequential(conv_bn(c, c2, stride=2), conv_bn(c2, c2, dilation=2),
                                  conv_bn(c2, c2, dilation=4))
        self.lateral = nn.Conv2d(c2, c, 1)
        self.fuse = conv_bn(c, c)
        self.heat = nn.Conv2d(c, 1, 1)
        self.reg = nn.Conv2d(c, len(REG_CHANNELS), 1)
        nn.init.constant_(self.heat.bias, -2.19)              # CenterNet's prior: p = 0.1

    def forward(self, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = grid.shape
        zs = torch.linspace(0, 1, h, device=grid.device).view(1, 1, h, 1).expand(b, 1, h, w)
        xs = torch.linspace(-1, 1, w, device=grid.device).abs().view(1, 1, 1, w).expand(b, 1, h, w)
        x = torch.cat([grid, zs, xs], dim=1)                  # (B, C + 2, nz, nx)
        s = self.stem(x)                                      # (B, c, nz/2, nx/2)
        d = self.down(s)                                      # (B, 2c, nz/4, nx/4)
        up = F.interpolate(self.lateral(d), size=s.shape[-2:], mode="bilinear", align_corners=False)
        f = self.fuse(s + up)                                 # (B, c, nz/2, nx/2)
        return self.heat(f), self.reg(f)


class CarDetector(DetectorNode):
    """BEV centre-heatmap car detector on pseudo-LiDAR points (see the module docstring).

    Inputs ``points`` (Ragged of (n, 3) camera-frame points per image) and ``calib`` ((N, 3, 4)
    P2, used to project the 3D boxes to 2D boxes); target ``labels``; output ``boxes``. The node
    reads no image, so ``image_shape`` (H, W) gives the size that 2D boxes are clipped to and
    that scales the KITTI difficulty heights (default: the world's 192 x 624 camera). A size that
    does not put the principal point near the image's centre (35-65 % of each side, as any real
    camera and the world) is refused: a stale size would silently mis-grade difficulty.
    """

    object_class = CAR
    input_kinds = {"points": "points", "calib": "calib"}
    output_kinds = {"boxes": "boxes", "image_size": "array", "n_points": "array"}
    version = "1"
    execution_params = ("device",)

    def __init__(self, *, x_min: float = -20.0, x_max: float = 20.0, z_min: float = 0.0,
                 z_max: float = 60.0, cell: float = 0.5, width: int = 32, epochs: int = 10,
                 batch_size: int = 8, lr: float = 2e-3, weight_decay: float = 1e-4,
                 heatmap_sigma: float = 1.0, reg_weight: float = 1.0, flip: bool = True,
                 max_detections: int = 30, score_threshold: float = 0.05, nms_iou: float = 0.1,
                 image_shape: tuple[int, int] = (192, 624), device: str = "auto"):
        self.x_min = x_min
        self.x_max = x_max
        self.z_min = z_min
        self.z_max = z_max
        self.cell = cell
        self.width = width
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.heatmap_sigma = heatmap_sigma
        self.reg_weight = reg_weight
        self.flip = flip
        self.max_detections = max_detections
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.image_shape = image_shape
        self.device = device

    # -- helpers ---------------------------------------------------------------------------
    @property
    def grid(self) -> BEVGrid:
        return BEVGrid(self.x_min, self.x_max, self.z_min, self.z_max, self.cell)

    @property
    def out_cell(self) -> float:
        return 2.0 * self.cell

    def _rasterize_all(self, points: Ragged) -> tuple[torch.Tensor, np.ndarray]:
        grid = self.grid
        n = len(points)
        out = torch.zeros((n, len(GRID_CHANNELS), grid.nz, grid.nx), dtype=torch.float16)
        n_in = np.zeros(n, dtype=np.int64)
        for i in progress(range(n), desc="BEV grids", leave=False):
            p = points[i]
            n_in[i] = int(grid.in_range(p).sum()) if len(p) else 0
            out[i] = torch.from_numpy(grid.rasterize(p))
        return out, n_in

    def _targets(self, labels: list[np.ndarray], flips: np.ndarray) -> tuple[np.ndarray, ...]:
        """Heatmaps ``(B, 1, h, w)``, regression targets ``(B, 8, h, w)`` and their mask ``(B, 1, h, w)``."""
        grid = self.grid
        h, w = grid.nz // 2, grid.nx // 2
        oc = self.out_cell
        b = len(labels)
        heat = np.zeros((b, 1, h, w), dtype=np.float32)
        reg = np.zeros((b, len(REG_CHANNELS), h, w), dtype=np.float32)
        mask = np.zeros((b, 1, h, w), dtype=np.float32)
        for i, lab in enumerate(labels):
            cars = lab[lab[:, L["cls"]] == CAR]
            if len(cars) == 0:
                continue
            x, y, z = cars[:, L["x"]].copy(), cars[:, L["y"]], cars[:, L["z"]]
            ry = cars[:, L["ry"]].copy()
            if flips[i]:
                x, ry = -x, np.pi - ry
            u = (x - grid.x_min) / oc
            v = (z - grid.z_min) / oc
            inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
            heat[i, 0] = draw_gaussians((h, w), np.stack([v[inside], u[inside]], 1), self.heatmap_sigma)
            for k in np.flatnonzero(inside):
                r, c = int(v[k]), int(u[k])
                reg[i, :, r, c] = [u[k] - c, v[k] - r, y[k] - self.mean_y_,
                                   *np.log(cars[k, [L["h"], L["w"], L["l"]]] / self.mean_size_),
                                   np.sin(2 * ry[k]), np.cos(2 * ry[k])]
                mask[i, 0, r, c] = 1.0
        return heat, reg, mask

    def _image_size(self, P: np.ndarray) -> np.ndarray:
        """``(N, 2)`` image height and width: the node reads no image, so they are a parameter."""
        hw = np.asarray(tuple(self.image_shape), dtype=np.int64).reshape(2)
        fx, fy = P[:, 0, 2] / hw[1], P[:, 1, 2] / hw[0]
        outside = (fx < 0.35) | (fx > 0.65) | (fy < 0.35) | (fy > 0.65)
        if np.any(outside):
            i = int(np.flatnonzero(outside)[0])
            raise ValueError(f"CarDetector: image {i}'s principal point ({P[i, 0, 2]:.1f}, {P[i, 1, 2]:.1f}) "
                             f"is not near the centre of image_shape={tuple(int(v) for v in hw)} (H, W); "
                             "set the node's image_shape to the images' size")
        return np.broadcast_to(hw, (len(P), 2)).copy()

    # -- the node contract -----------------------------------------------------------------
    def fit(self, inputs: Mapping[str, Any], targets: Mapping[str, Any], *, seed: int) -> "CarDetector":
        points = check_points(inputs["points"])
        labels = check_labels(targets["labels"], len(points))
        if self.flip and not math.isclose(self.x_min, -self.x_max):
            raise ValueError(f"flip=True needs a grid symmetric in x, got x_min={self.x_min}, x_max={self.x_max}")
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        dev = resolve_device(self.device)
        lv = np.asarray(labels.values, dtype=np.float64).reshape(-1, len(LABEL_COLUMNS))
        cars = lv[lv[:, L["cls"]] == CAR]
        if len(cars) == 0:
            raise ValueError("CarDetector.fit: the training labels hold no Car rows")
        self.mean_size_ = cars[:, [L["h"], L["w"], L["l"]]].mean(axis=0)
        self.mean_y_ = float(cars[:, L["y"]].mean())
        grids, n_in = self._rasterize_all(points)
        if np.any(n_in == 0):
            log.warning("CarDetector.fit: %d of %d training clouds have no point in the grid",
                        int((n_in == 0).sum()), len(n_in))
        net = BEVNet(len(GRID_CHANNELS), self.width)
        label_list = [np.asarray(labels[i], dtype=np.float64) for i in range(len(points))]

        def batch_loss(net, idx, step):
            # the flips come from the generator of the batch order, after it
            x, flips = random_flips(grids[idx].float(), rng, self.flip)    # (B, C, nz, nx)
            targets = (torch.from_numpy(a).to(dev)
                       for a in self._targets([label_list[i] for i in idx], flips))
            heat, reg = net(x.to(dev))
            return centre_loss(heat, reg, *targets, reg_weight=self.reg_weight)

        trained = train(net, batch_loss, epochs=self.epochs, n=len(points),
                        batch_size=self.batch_size, rng=rng, seed=seed, optimizer="adamw",
                        lr=self.lr, weight_decay=self.weight_decay, schedule="onecycle",
                        schedule_every="step", device=dev, name="CarDetector")
        self.net_ = trained.module
        self.train_loss_ = trained.history
        return self

    @torch.no_grad()
    def predict(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        self._require_fitted()
        points = check_points(inputs["points"])
        P = check_calib(inputs["calib"], len(points))
        image_size = self._image_size(P)
        grids, n_in = self._rasterize_all(points)
        if np.any(n_in == 0):
            log.warning("CarDetector: %d of %d clouds have no point in the grid (no detections there)",
                        int((n_in == 0).sum()), len(n_in))
        net = self.net_
        rows = []
        grid = self.grid
        oc = self.out_cell
        for start in range(0, len(points), 16):
            x = grids[start:start + 16].float()
            heat, reg = net(x)
            scores, r, c = peaks(torch.sigmoid(heat), self.max_detections)
            for b in range(len(x)):
                i = start + b
                keep = scores[b] >= self.score_threshold
                if n_in[i] == 0 or not bool(keep.any()):
                    rows.append(np.zeros((0, len(BOX_COLUMNS)), dtype=np.float32))
                    continue
                rr, cc, ss = r[b][keep], c[b][keep], scores[b][keep].numpy().astype(np.float64)
                g = reg[b][:, rr, cc].numpy().astype(np.float64)            # (8, k)
                xs = grid.x_min + (cc.numpy() + g[0]) * oc
                zs = grid.z_min + (rr.numpy() + g[1]) * oc
                ys = self.mean_y_ + g[2]
                dims = self.mean_size_[None, :] * np.exp(np.clip(g[3:6].T, -2, 2))   # (k, 3) h w l
                ry = 0.5 * np.arctan2(g[6], g[7])
                box7 = np.column_stack([xs, ys, zs, dims, ry])
                keep_nms = bx.bev_nms(box7, ss, self.nms_iou)
                box7, ss = box7[keep_nms], ss[keep_nms]
                box2d = bx.project_boxes(box7, P[i], tuple(image_size[i]))
                rows.append(self._rows(CAR, box7, box2d, ss))
        return {"boxes": Ragged.from_list(rows, width=len(BOX_COLUMNS)),
                "image_size": image_size, "n_points": n_in}

    def state_dict(self) -> dict[str, Any]:
        self._require_fitted()
        state = {f"net.{k}": v.detach().cpu().clone() for k, v in self.net_.state_dict().items()}
        state["mean_size_"] = np.asarray(self.mean_size_, dtype=np.float64)
        state["mean_y_"] = np.asarray(self.mean_y_, dtype=np.float64)
        state["train_loss_"] = np.asarray(self.train_loss_, dtype=np.float64)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> "CarDetector":
        net = BEVNet(len(GRID_CHANNELS), self.width)
        net.load_state_dict({k[4:]: torch.as_tensor(v) for k, v in state.items() if k.startswith("net.")})
        self.net_ = net.eval()
        self.mean_size_ = np.asarray(state["mean_size_"], dtype=np.float64)
        self.mean_y_ = float(np.asarray(state["mean_y_"]))
        self.train_loss_ = np.asarray(state["train_loss_"], dtype=np.float64)
        return self
