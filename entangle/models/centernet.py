"""Centre-heatmap detection pieces shared by the BEV car detector and the image detector.

CenterNet (Zhou et al., "Objects as Points", 2019) detects an object as the peak of a per-class
heatmap and regresses its other properties at the peak. Training targets are Gaussians around
the object centres; the loss is CenterNet's penalty-reduced focal loss, which down-weights the
negatives near a centre so the network is not punished for a peak one cell off.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def draw_gaussians(shape: tuple[int, int], centres: np.ndarray, sigmas: np.ndarray | float) -> np.ndarray:
    """Heatmap ``(H, W)`` with a unit-peak Gaussian at each ``(row, col)`` centre (max where they meet).

    Centres are continuous cell coordinates; the peak is put on the cell containing the centre,
    so that the target's maximum is exactly 1 where the regression targets live.
    """
    h, w = shape
    heat = np.zeros((h, w), dtype=np.float32)
    c = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    s = np.broadcast_to(np.asarray(sigmas, dtype=np.float64), (len(c),))
    rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
    for (r, q), sig in zip(c, s):
        ri, ci = int(np.floor(r)), int(np.floor(q))
        if not (0 <= ri < h and 0 <= ci < w):
            continue
        rad = int(np.ceil(3 * sig))
        r0, r1, c0, c1 = max(ri - rad, 0), min(ri + rad + 1, h), max(ci - rad, 0), min(ci + rad + 1, w)
        g = np.exp(-((rows[r0:r1] - ri) ** 2 + (cols[:, c0:c1] - ci) ** 2) / (2 * sig ** 2))
        heat[r0:r1, c0:c1] = np.maximum(heat[r0:r1, c0:c1], g)
    return heat


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, normalised by the number of objects (peaks == 1)."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    neg = 1.0 - pos
    pos_loss = -torch.log(p) * (1 - p) ** alpha * pos
    neg_loss = -torch.log(1 - p) * p ** alpha * (1 - target) ** beta * neg
    n_pos = pos.sum().clamp(min=1.0)
    return (pos_loss.sum() + neg_loss.sum()) / n_pos


def centre_loss(heat: torch.Tensor, reg: torch.Tensor, heat_target: torch.Tensor,
                reg_target: torch.Tensor, mask: torch.Tensor, reg_weight: float = 1.0) -> torch.Tensor:
    """Both detectors' training loss: focal loss on the heatmap plus ``reg_weight`` x the L1 loss
    of the regression channels at the object centres (``mask`` 1 there), per object."""
    l_heat = focal_loss(heat, heat_target)
    l_reg = (F.l1_loss(reg, reg_target, reduction="none") * mask).sum() / mask.sum().clamp(min=1.0)
    return l_heat + reg_weight * l_reg


def random_flips(x: torch.Tensor, rng: np.random.Generator,
                 enabled: bool = True) -> tuple[torch.Tensor, np.ndarray]:
    """Mirror each input ``(B, C, H, W)`` left-right with probability 1/2 (in place); returns the
    batch and the flags ``(B,)`` its targets must follow. Draws from ``rng`` only when enabled."""
    flips = (rng.random(len(x)) < 0.5) if enabled else np.zeros(len(x), bool)
    fl = torch.from_numpy(flips)
    x[fl] = torch.flip(x[fl], dims=[-1])
    return x, flips


def peaks(heat: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``k`` local maxima (3x3) of a sigmoid heatmap ``(B, 1, H, W)``: scores, rows, cols ``(B, k)``."""
    hmax = F.max_pool2d(heat, 3, stride=1, padding=1)
    keep = (hmax == heat).float() * heat                       # (B, 1, H, W)
    b, _, h, w = keep.shape
    k = min(k, h * w)
    scores, idx = keep.view(b, -1).topk(k, dim=1)              # (B, k)
    return scores, idx // w, idx % w


def conv_bn(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """3x3 convolution, batch norm, ReLU: the building block of both detectors' backbones."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class Head(nn.Module):
    """A 3x3 conv + ReLU + 1x1 conv head; ``bias`` sets the initial output (CenterNet: -2.19 for heatmaps)."""

    def __init__(self, c_in: int, c_out: int, bias: float = 0.0):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c_in, c_in, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(c_in, c_out, 1))
        nn.init.constant_(self.body[-1].bias, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
