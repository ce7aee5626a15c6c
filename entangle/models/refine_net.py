"""A small residual refiner of a classical disparity map, sized to train on a CPU in minutes.

Production stereo often refines a classical matcher's answer rather than replacing it ("detect,
replace, refine": Gidaris & Komodakis, CVPR 2017; Neural Disparity Refinement, Aleotti et al.,
3DV 2021). The network reads, at full resolution:

* the left image (3 channels, normalised);
* the classical disparity ``d0`` (divided by :attr:`RefinerConfig.scale`) and its invalid mask
  (pixels the matcher left unmatched and the hole filling invented);
* the **sub-pixel phase** of ``d0`` as ``sin``/``cos`` of ``2π·d0``: SGM's parabola fit is biased
  towards whole pixels (Haller et al. 2010), a bias that depends on the phase alone;
* the **photometric error** (luminance) of the right image warped at ``d0 + o`` for the offsets
  :data:`OFFSETS` (−2 … +2 px), averaged over :data:`BLOCK` × :data:`BLOCK` windows, and the
  unaveraged error at ``o = 0``: a local cost profile around the classical answer;
* with :attr:`RefinerConfig.smooth`, **edge-aware candidates**: for each window size ``k``, the
  mean of the matched disparities in the ``k × k`` window weighted by how close each is to the
  centre's (a range kernel of :attr:`RefinerConfig.smooth_range` px), as its difference from
  ``d0``. Aggregating along a surface is what lowers an object's sub-pixel error (SGBM's
  per-pixel noise), and the range kernel stops at the object's edge.

A full-resolution stem keeps the edges; a stride-2 convolution and residual blocks dilated
1, 2, 4, 1 at half resolution give a receptive field of about 80 px, enough to repair an
object's gross errors from its edges and image; two full-resolution 3 × 3 convolutions join
both and emit a correction, and the output is ``d0 + correction``. That last layer starts
at exactly zero, so an untrained refiner outputs ``d0`` bit for bit: the classical answer is
the design's floor, and every change is learned.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from entangle.models.stereo_net import ResBlock, conv2d_bn, warp_right

#: disparity offsets (px) around the classical answer at which the right image is compared
OFFSETS = (-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0)
#: side of the window the photometric errors are averaged over (px)
BLOCK = 5
#: feature channels without candidates: image 3, disparity 1, invalid 1, phase 2, centre error
#: 1, profile (:attr:`RefinerConfig.in_channels` adds one per edge-aware candidate)
IN_CHANNELS = 3 + 1 + 1 + 2 + 1 + len(OFFSETS)


@dataclass(frozen=True)
class RefinerConfig:
    """The refiner's shape: ``channels`` of its half-resolution body (the full-resolution layers
    have half as many), ``dilations`` of the body's residual blocks, ``scale`` (px) the
    disparity input is divided by, and ``max_correction`` (px): when set, the correction is
    ``m·tanh(z / m)``, at most ``m`` either way (a refiner of what SGBM matched, not a
    replacement of what it missed); None leaves it unbounded. ``split``: "replace, refine" —
    pixels the matcher left unmatched take the wide-context correction, matched pixels a local
    one (:attr:`local_field` px of the features) that cannot carry the background's corrections
    across an object's edge; ``max_correction`` then bounds the local one only. ``smooth``: the
    window sizes (odd, px) of the edge-aware candidates (module docstring) and ``smooth_range``
    (px) their range kernel; with ``split`` a matched pixel's correction is a learned blend of
    them, ``Σ a_k·(candidate_k − d0) + r``, ``r`` starting at 0 and each ``a_k`` at
    ``blend_start[k]`` (empty: all 0, so the untrained refiner is the classical map; ``[0, 1]``
    with ``smooth: [5, 9]`` starts the matched pixels at the 9 × 9 edge-aware mean)."""

    channels: int = 16
    dilations: tuple[int, ...] = (1, 2, 4, 1)
    scale: float = 64.0
    max_correction: float | None = None
    split: bool = False
    smooth: tuple[int, ...] = ()
    smooth_range: float = 0.7
    blend_start: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "dilations", tuple(int(d) for d in self.dilations))
        object.__setattr__(self, "smooth", tuple(int(k) for k in self.smooth))
        object.__setattr__(self, "blend_start", tuple(float(a) for a in self.blend_start))
        if self.blend_start and (len(self.blend_start) != len(self.smooth) or not self.split
                                 or not all(math.isfinite(a) for a in self.blend_start)):
            raise ValueError(f"blend_start must give one finite weight per smooth window "
                             f"{list(self.smooth)} of a split refiner, got {list(self.blend_start)}")
        if any(k < 3 or k % 2 == 0 for k in self.smooth):
            raise ValueError(f"smooth must list odd window sizes of at least 3, got {self.smooth!r}")
        if not (float(self.smooth_range) > 0):
            raise ValueError(f"smooth_range must be positive, got {self.smooth_range!r}")
        if int(self.channels) < 1:
            raise ValueError(f"channels must be a positive integer, got {self.channels!r}")
        if not self.dilations or any(d < 1 for d in self.dilations):
            raise ValueError(f"dilations must be positive integers, got {self.dilations!r}")
        if not (float(self.scale) > 0):
            raise ValueError(f"scale must be positive, got {self.scale!r}")
        if self.max_correction is not None and not (float(self.max_correction) > 0):
            raise ValueError(f"max_correction must be positive or None, got {self.max_correction!r}")

    @property
    def receptive_field(self) -> int:
        """Width (px) of the input window one output pixel reads: full-resolution stem, the
        stride-2 convolution, the half-resolution blocks (2 px per dilated pixel), the two
        full-resolution convolutions after the upsampling."""
        return 1 + 2 + 2 + 2 * 4 * sum(self.dilations) + 2 + 2 + 2

    @property
    def local_field(self) -> int:
        """Width (px) of the feature window a matched pixel's correction reads when ``split``:
        the stem's 3 × 3 convolution, then per-pixel layers (each candidate channel itself
        reads a ``k × k`` window of ``d0``, bounded by the range kernel)."""
        return 3

    @property
    def in_channels(self) -> int:
        """Feature channels: :data:`IN_CHANNELS` plus one per edge-aware candidate."""
        return IN_CHANNELS + len(self.smooth)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dilations"] = list(self.dilations)
        d["smooth"] = list(self.smooth)
        d["blend_start"] = list(self.blend_start)
        return d


def edge_aware_means(disparity: torch.Tensor, matched: torch.Tensor, windows: tuple[int, ...],
                     sigma: float) -> torch.Tensor:
    """Per pixel and per window size ``k``, the mean of the matched disparities of its ``k × k``
    window weighted by ``exp(−½((d_j − d_i)/sigma)²)``: a bilateral filter in disparity alone, so
    a neighbour on another surface (a disparity edge) barely counts. (batch, H, W) ->
    (batch, len(windows), H, W); a pixel with no weight keeps its own value.

    One pass over the offsets of the largest window serves every window (a smaller window's
    offsets are a subset), and no window stack is built: memory stays a few images.
    """
    b, h, w = disparity.shape
    windows = tuple(int(k) for k in windows)
    if not windows:
        return disparity.new_zeros((b, 0, h, w))
    r = max(windows) // 2
    padded = F.pad(disparity, (r, r, r, r))
    padded_matched = F.pad(matched.to(disparity.dtype), (r, r, r, r))
    num = disparity.new_zeros((len(windows), b, h, w))
    den = torch.zeros_like(num)
    weight, weighted = torch.empty_like(disparity), torch.empty_like(disparity)
    scale = -0.5 / float(sigma) ** 2
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            near = padded[:, r + dy:r + dy + h, r + dx:r + dx + w]
            torch.sub(near, disparity, out=weight)
            weight.square_().mul_(scale).exp_().mul_(padded_matched[:, r + dy:r + dy + h, r + dx:r + dx + w])
            torch.mul(weight, near, out=weighted)
            for i, k in enumerate(windows):
                if max(abs(dy), abs(dx)) <= k // 2:
                    num[i].add_(weighted)
                    den[i].add_(weight)
    means = torch.where(den > 1e-6, num / den.clamp(min=1e-6), disparity.unsqueeze(0))
    return means.transpose(0, 1).contiguous()


def edge_aware_mean(disparity: torch.Tensor, matched: torch.Tensor, k: int,
                    sigma: float) -> torch.Tensor:
    """:func:`edge_aware_means` for one window size: (batch, H, W) -> (batch, H, W)."""
    return edge_aware_means(disparity, matched, (k,), sigma)[:, 0]


def edge_aware_candidates(disparity: torch.Tensor, invalid: torch.Tensor, smooth: tuple[int, ...],
                          smooth_range: float) -> torch.Tensor:
    """The edge-aware candidates minus ``d0``, (batch, len(smooth), H, W): one
    :func:`edge_aware_means` of the matched disparities per window size."""
    return edge_aware_means(disparity, 1.0 - invalid, tuple(smooth), smooth_range) - disparity.unsqueeze(1)


def refiner_features(left: torch.Tensor, right: torch.Tensor, disparity: torch.Tensor,
                     invalid: torch.Tensor, scale: float, smooth: tuple[int, ...] = (),
                     smooth_range: float = 0.7, candidates: torch.Tensor | None = None) -> torch.Tensor:
    """The refiner's input ``(batch, IN_CHANNELS + len(smooth), H, W)`` (module docstring).

    ``left``/``right`` normalised images (batch, 3, H, W); ``disparity`` the classical answer and
    ``invalid`` its unmatched mask, (batch, H, W) float; ``smooth`` and ``smooth_range`` the
    edge-aware candidates' windows and range kernel, or ``candidates`` already computed by
    :func:`edge_aware_candidates` (training computes them once per scene, not per step).
    """
    # on luminance: a third of the warping of colour, the cost of every scene's prediction
    left_y, right_y = left.mean(dim=1, keepdim=True), right.mean(dim=1, keepdim=True)
    errors = torch.cat([(left_y - warp_right(right_y, disparity + off)).abs()
                        for off in OFFSETS], dim=1)                       # (batch, offsets, H, W)
    centre = errors[:, OFFSETS.index(0.0)].unsqueeze(1)                   # (batch, 1, H, W)
    profile = F.avg_pool2d(errors, BLOCK, stride=1, padding=BLOCK // 2,
                           count_include_pad=False)                       # (batch, offsets, H, W)
    phase = 2 * math.pi * disparity.unsqueeze(1)
    if candidates is None:
        candidates = edge_aware_candidates(disparity, invalid, smooth, smooth_range)
    return torch.cat([left, disparity.unsqueeze(1) / scale, invalid.unsqueeze(1),
                      torch.sin(phase), torch.cos(phase), centre, profile, candidates], dim=1)


class DisparityRefiner(nn.Module):
    """Classical disparity plus a learned, image-guided correction (zero at initialisation).

    A full-resolution stem keeps the edges; the context that repairs gross errors is gathered at
    half resolution (a stride-2 convolution, dilated residual blocks), upsampled and joined with
    the stem's features by two full-resolution convolutions, the last of which starts at zero.
    """

    def __init__(self, config: RefinerConfig | None = None):
        super().__init__()
        self.config = config or RefinerConfig()
        c = int(self.config.channels)
        fine = max(c // 2, 1)
        self.stem = conv2d_bn(self.config.in_channels, fine)
        self.down = conv2d_bn(fine, c, stride=2)
        self.blocks = nn.Sequential(*[ResBlock(c, d) for d in self.config.dilations])
        self.fuse = conv2d_bn(fine + c, fine)
        self.out = nn.Conv2d(fine, 1, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        if self.config.split:
            # the matched pixels' refinement, per pixel on the stem's features: a residual and
            # one blending weight per edge-aware candidate
            self.local = nn.Sequential(nn.Conv2d(fine, c, 1), nn.ReLU(inplace=True))
            self.local_out = nn.Conv2d(c, 1 + len(self.config.smooth), 1)
            nn.init.zeros_(self.local_out.weight)
            nn.init.zeros_(self.local_out.bias)
            with torch.no_grad():
                for k, a in enumerate(self.config.blend_start):
                    self.local_out.bias[1 + k] = a

    def forward(self, left: torch.Tensor, right: torch.Tensor, disparity: torch.Tensor,
                invalid: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, 3, H, W) images, (batch, H, W) classical disparity and invalid mask ->
        refined disparity (batch, H, W); ``candidates``: the edge-aware candidates when already
        computed (:func:`edge_aware_candidates`), else computed here."""
        features = refiner_features(left, right, disparity, invalid, float(self.config.scale),
                                    self.config.smooth, float(self.config.smooth_range), candidates)
        return disparity + self.correction(features)

    def correction(self, features: torch.Tensor) -> torch.Tensor:
        """The learned correction (batch, H, W) from :func:`refiner_features` (batch, C, H, W);
        training computes the features on whole images and corrects crops of them."""
        # channels-last: narrow convolutions at full resolution run faster on CPU
        x = self.stem(features.contiguous(memory_format=torch.channels_last))
        context = self.blocks(self.down(x))
        context = F.interpolate(context, size=x.shape[-2:], mode="bilinear", align_corners=False)
        z = self.out(self.fuse(torch.cat([x, context], dim=1)))[:, 0]
        m = self.config.max_correction
        if not self.config.split:
            return z if m is None else float(m) * torch.tanh(z / float(m))
        head = self.local_out(self.local(x))
        local = head[:, 0] + (head[:, 1:] * features[:, IN_CHANNELS:]).sum(dim=1)
        if m is not None:
            local = float(m) * torch.tanh(local / float(m))
        invalid = features[:, 4]
        return invalid * z + (1.0 - invalid) * local
