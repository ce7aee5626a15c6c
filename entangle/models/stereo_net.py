"""A small stereo network of the PSMNet family, sized to train on a CPU in minutes.

Read top to bottom: a 2D feature extractor at 1/4 resolution, a group-wise correlation cost
volume (GwcNet's cheaper cousin of PSMNet's concatenation volume) over candidate disparities
``disp_step`` pixels apart, three stacked 3D hourglasses that each emit a matching score, and
a soft-argmin that turns each score into a disparity. The three disparities come out stacked so
that training can weigh them 0.5, 0.7 and 1.0, as PSMNet does. With ``refine`` a fourth output
follows: an image-guided residual refinement at full resolution (StereoNet's, Khamis et al.
2018, with 8 channels), weighted 1.0. The last output is the prediction.

The network predicts *disparity* only. Depth is always ``Z = f·B / d``, computed outside, so a
disparity loss and a depth loss train the very same network (the one difference between u and
u' in the reference case study).

Two details decide how precise the quarter-resolution estimate can be, and both are exact here:

* **The disparity axis.** Candidate ``k`` of the volume correlates left features with right
  features shifted by ``k·disp_step / 4`` quarter-resolution pixels; a shift that is not whole
  interpolates the right features linearly between two columns. ``disp_step`` 4 puts candidates
  4 px apart (PSMNet's volume at 1/4 resolution); 2 halves the spacing for twice the volume.
  The scores are interpolated to every integer disparity with candidate ``k`` *at* ``k·disp_step``
  before the softmax.
* **The grid.** Feature ``x`` of the quarter-resolution maps is centred on image pixel ``4x``
  (two stride-2 convolutions with padding 1), so the disparity map is upsampled with output pixel
  ``X`` reading input ``X / 4``. (``F.interpolate(..., align_corners=False)`` would read
  ``(X + 0.5) / 4 - 0.5``, which shifts every edge 1.5 px right and down, and the disparity axis
  the same way: errors the network has to spend capacity undoing, worst at object boundaries.)

Sizes: the feature extractor halves the image twice and each hourglass halves the volume twice
more, so height, width and ``max_disp`` must be multiples of 16 (:data:`SIZE_MULTIPLE`), and
``max_disp / disp_step`` a multiple of 4; any other size raises :class:`ValueError` with the
offending numbers.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

#: Height, width and max_disp must be multiples of this (1/4 features, then 1/4 in the hourglass).
SIZE_MULTIPLE = 16
#: Downsampling of the feature maps and of the cost volume relative to the image.
FEATURE_STRIDE = 4
#: Loss weights of the three stacked outputs of the volume (PSMNet's 0.5, 0.7, 1.0).
OUTPUT_WEIGHTS = (0.5, 0.7, 1.0)
#: Loss weight of the refined output, when there is one (the prediction: as PSMNet's last).
REFINED_WEIGHT = 1.0
#: Disparity spacings of the volume the network supports (full-resolution pixels).
DISP_STEPS = (1, 2, 4)


@dataclass(frozen=True)
class StereoNetConfig:
    """Sizes of :class:`StereoNet`; frozen so a config can be hashed, compared and shared."""

    max_disp: int = 64          # disparities searched at full resolution: [0, max_disp)
    channels: int = 16          # 2D feature channels at 1/4 resolution
    groups: int = 4             # correlation groups of the cost volume (channels % groups == 0)
    volume_channels: int = 8    # channels of the 3D convolutions over the cost volume
    disp_step: int = 2          # spacing of the volume's candidate disparities (px): 4, 2 or 1
    refine: bool = True         # add the full-resolution image-guided refinement (4th output)
    refine_channels: int = 8    # channels of the refinement's convolutions
    head_kernel: int = 3        # kernel of the score heads: 3 (PSMNet's) or 1

    def __post_init__(self) -> None:
        if self.max_disp <= 0 or self.max_disp % SIZE_MULTIPLE:
            raise ValueError(f"StereoNetConfig.max_disp must be a positive multiple of "
                             f"{SIZE_MULTIPLE}, got {self.max_disp}")
        if self.channels <= 0 or self.groups <= 0 or self.channels % self.groups:
            raise ValueError(f"StereoNetConfig.channels ({self.channels}) must be a positive "
                             f"multiple of groups ({self.groups})")
        if self.volume_channels <= 0:
            raise ValueError(f"StereoNetConfig.volume_channels must be positive, got {self.volume_channels}")
        if self.disp_step not in DISP_STEPS or (self.max_disp // self.disp_step) % 4:
            raise ValueError(f"StereoNetConfig.disp_step must be one of {DISP_STEPS} with "
                             f"max_disp / disp_step a multiple of 4; got disp_step {self.disp_step}, "
                             f"max_disp {self.max_disp}")
        if self.head_kernel not in (1, 3):
            raise ValueError(f"StereoNetConfig.head_kernel must be 1 or 3, got {self.head_kernel}")
        if self.refine_channels <= 0:
            raise ValueError(f"StereoNetConfig.refine_channels must be positive, got {self.refine_channels}")

    @property
    def num_candidates(self) -> int:
        """Candidate disparities of the cost volume: ``max_disp / disp_step``."""
        return self.max_disp // self.disp_step

    @property
    def num_outputs(self) -> int:
        """Stacked outputs of :meth:`StereoNet.forward` (3, or 4 with the refinement)."""
        return len(OUTPUT_WEIGHTS) + int(self.refine)

    def to_dict(self) -> dict:
        return asdict(self)


def output_weights(n_outputs: int) -> tuple[float, ...]:
    """Loss weights of ``n_outputs`` stacked outputs: PSMNet's three, then the refined one."""
    if n_outputs == len(OUTPUT_WEIGHTS):
        return OUTPUT_WEIGHTS
    if n_outputs == len(OUTPUT_WEIGHTS) + 1:
        return (*OUTPUT_WEIGHTS, REFINED_WEIGHT)
    raise ValueError(f"a StereoNet has 3 or 4 stacked outputs, got {n_outputs}")


def check_image_size(height: int, width: int) -> None:
    """Raise ``ValueError`` unless an image of this size fits the network's downsampling."""
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE or height < SIZE_MULTIPLE or width < SIZE_MULTIPLE:
        raise ValueError(
            f"StereoNet needs image height and width that are positive multiples of "
            f"{SIZE_MULTIPLE} (features at 1/{FEATURE_STRIDE}, hourglass at 1/{SIZE_MULTIPLE}); "
            f"got {height}x{width}. Resize or crop the images, e.g. to "
            f"{height // SIZE_MULTIPLE * SIZE_MULTIPLE}x{width // SIZE_MULTIPLE * SIZE_MULTIPLE}.")


# -- building blocks ----------------------------------------------------------------------------

def conv2d_bn(cin: int, cout: int, stride: int = 1, dilation: int = 1, relu: bool = True) -> nn.Sequential:
    """3x3 conv, batch norm and (optionally) ReLU; padding keeps the size at stride 1."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def conv3d_bn(cin: int, cout: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    """3x3x3 conv over (disparity, height, width), batch norm and (optionally) ReLU."""
    layers: list[nn.Module] = [nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False),
                               nn.BatchNorm3d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ResBlock(nn.Module):
    """Two 3x3 convs with an identity skip (dilated for a wider receptive field)."""

    def __init__(self, channels: int, dilation: int = 1):
        super().__init__()
        self.conv1 = conv2d_bn(channels, channels, dilation=dilation)
        self.conv2 = conv2d_bn(channels, channels, dilation=dilation, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv2(self.conv1(x)))


class FeatureExtractor(nn.Module):
    """Image to matching features at 1/4 resolution; shared by the left and right image."""

    def __init__(self, channels: int):
        super().__init__()
        half = max(channels // 2, 1)
        self.stem = nn.Sequential(
            conv2d_bn(3, half, stride=2),          # 1/2
            conv2d_bn(half, half),
            conv2d_bn(half, channels, stride=2),   # 1/4
        )
        # dilations 1, 2, 4 widen the context cheaply (PSMNet uses dilated residual stages and
        # pyramid pooling for the same reason: textureless regions need context to match).
        self.blocks = nn.Sequential(ResBlock(channels), ResBlock(channels, 2), ResBlock(channels, 4))
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # (batch, 3, H, W) -> (batch, channels, H/4, W/4)
        return self.out(self.blocks(self.stem(image)))


def shift_fraction(features: torch.Tensor, frac: float) -> torch.Tensor:
    """``features`` sampled at ``x - frac`` for ``0 <= frac < 1``: linear between two columns.

    ``features`` (..., w) -> the same shape. Column 0 has no left neighbour and reads zero there,
    like every shift that leaves the image.
    """
    before = F.pad(features, (1, 0))[..., :-1]            # column x - 1, zero at x = 0  (..., w)
    return (1.0 - frac) * features + frac * before


def group_correlation_volume(left: torch.Tensor, right: torch.Tensor, num_candidates: int,
                             groups: int, step: float = 1.0) -> torch.Tensor:
    """Group-wise correlation cost volume (GwcNet): one correlation per channel group and shift.

    ``volume[b, g, k, y, x]`` correlates left pixel ``x`` with the right features at
    ``x - k·step`` (feature pixels; a fractional shift interpolates the right features linearly,
    computed once per fractional phase). Where the shifted pixel falls off the image the volume
    stays zero.
    """
    b, c, h, w = left.shape
    # (batch, groups, channels/groups, H, W)
    lg = left.view(b, groups, c // groups, h, w)
    rg = right.view(b, groups, c // groups, h, w)
    volume = left.new_zeros(b, groups, num_candidates, h, w)   # (batch, groups, candidates, H, W)
    phases: dict[float, torch.Tensor] = {0.0: rg}
    for k in range(num_candidates):
        shift = k * step
        whole = int(math.floor(shift))
        if whole >= w:
            break
        frac = shift - whole
        if frac not in phases:
            phases[frac] = shift_fraction(rg, frac)             # (batch, groups, C/g, H, W)
        r = phases[frac]
        # left column x against right column x - whole (of the phase-shifted features)
        volume[:, :, k, :, whole:] = (lg[..., whole:] * r[..., :w - whole]).mean(dim=2)
    return volume


class Hourglass(nn.Module):
    """3D encoder-decoder over the cost volume (PSMNet's stacked hourglass, one stage)."""

    def __init__(self, channels: int):
        super().__init__()
        c2 = 2 * channels
        self.down1 = nn.Sequential(conv3d_bn(channels, c2, stride=2), conv3d_bn(c2, c2))
        self.down2 = nn.Sequential(conv3d_bn(c2, c2, stride=2), conv3d_bn(c2, c2))
        self.up1 = nn.Sequential(
            nn.ConvTranspose3d(c2, c2, 3, stride=2, padding=1, output_padding=1, bias=False),
            nn.BatchNorm3d(c2))
        self.up2 = nn.Sequential(
            nn.ConvTranspose3d(c2, channels, 3, stride=2, padding=1, output_padding=1, bias=False),
            nn.BatchNorm3d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (batch, C, D, h, w) with D the candidates, h, w the quarter-resolution sizes
        a = self.down1(x)                  # (batch, 2C, D/2, h/2, w/2)
        b = self.down2(a)                  # (batch, 2C, D/4, h/4, w/4)
        a = F.relu(self.up1(b) + a)        # (batch, 2C, D/2, h/2, w/2)
        return F.relu(self.up2(a) + x)     # (batch, C, D, h, w)


@functools.lru_cache(maxsize=32)
def _interpolation_matrix(n_out: int, n_in: int, step: float) -> torch.Tensor:
    """(n_out, n_in) linear interpolation: output ``i`` reads input coordinate ``i / step``.

    Coordinates past the last input clamp to it (the edge value repeats), so every row sums to 1.
    Cached, so it is built outside inference mode: a cached inference tensor could not serve a
    later training step.
    """
    with torch.inference_mode(False):
        pos = torch.arange(n_out, dtype=torch.float64) / step        # (n_out,)
        pos = pos.clamp(max=n_in - 1)
        lo = pos.floor().long()
        hi = (lo + 1).clamp(max=n_in - 1)
        frac = pos - lo
        m = torch.zeros(n_out, n_in, dtype=torch.float64)
        m[torch.arange(n_out), lo] += 1.0 - frac
        m[torch.arange(n_out), hi] += frac
        return m.float()


def upsample_aligned(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of (batch, h, w) maps to ``size`` where output ``X`` reads input ``X·w/W``.

    The quarter-resolution feature ``x`` is centred on image pixel ``4x`` (stride-2 convolutions
    with padding 1), which is what this places it at; separable, as two small matrix products.
    """
    _, h, w = x.shape
    H, W = size
    my = _interpolation_matrix(H, h, H / h).to(x)                    # (H, h)
    mx = _interpolation_matrix(W, w, W / w).to(x)                    # (W, w)
    # (batch, h, w) -> (batch, H, w) -> (batch, H, W)
    return torch.matmul(torch.matmul(my, x), mx.t())


def soft_argmin(score: torch.Tensor, max_disp: int, step: int, size: tuple[int, int]) -> torch.Tensor:
    """Disparity as the softmax-weighted mean of candidate disparities, upsampled to full size.

    The quarter-resolution score ``(batch, D, h, w)`` over candidates ``k·step`` is interpolated
    along the disparity axis to all ``max_disp`` integer candidates (candidate ``k`` *at*
    ``k·step``), turned into a distribution by a softmax and reduced to its expectation
    (differentiable and sub-pixel); the disparity map is then upsampled to the image size with
    :func:`upsample_aligned`. PSMNet instead upsamples the whole volume trilinearly to full
    resolution before the softmax: that costs 16x more memory and two thirds of a CPU training
    step here, for the same quarter-resolution information. The heads learn a matching *score*,
    so the softmax takes it unnegated (PSMNet negates a cost).
    """
    _, d, _, _ = score.shape
    m = _interpolation_matrix(max_disp, d, float(step)).to(score)       # (max_disp, D)
    # (batch, D, h, w) -> (batch, max_disp, h, w): one score per full-resolution disparity
    full = torch.einsum("bdyx,id->biyx", score, m)
    prob = torch.softmax(full, dim=1)                                    # (batch, max_disp, h, w)
    candidates = torch.arange(max_disp, dtype=prob.dtype, device=prob.device).view(1, -1, 1, 1)
    disparity = (prob * candidates).sum(dim=1)                           # (batch, h, w)
    # disparities are in full-resolution pixels already; only the grid is upsampled
    return upsample_aligned(disparity, size)                             # (batch, H, W)


def warp_right(right: torch.Tensor, disparity: torch.Tensor) -> torch.Tensor:
    """The right image resampled at ``x - d(x, y)``: what the left image should look like.

    ``right`` (batch, C, H, W), ``disparity`` (batch, H, W) -> (batch, C, H, W); bilinear,
    border pixels repeat where ``x - d`` leaves the image.
    """
    b, _, h, w = right.shape
    xs = torch.arange(w, dtype=right.dtype, device=right.device).view(1, 1, w)
    ys = torch.arange(h, dtype=right.dtype, device=right.device).view(1, h, 1)
    gx = (xs - disparity) * (2.0 / max(w - 1, 1)) - 1.0                  # (batch, H, W)
    gy = (ys * (2.0 / max(h - 1, 1)) - 1.0).expand(b, h, w)              # (batch, H, W)
    grid = torch.stack([gx, gy], dim=-1)                                 # (batch, H, W, 2)
    return F.grid_sample(right, grid, mode="bilinear", padding_mode="border", align_corners=True)


class Refinement(nn.Module):
    """Image-guided refinement at full resolution: a local matcher around the upsampled estimate.

    StereoNet's refinement (Khamis et al. 2018) reads the left image, the upsampled disparity
    and the photometric error of the right image warped by it, and predicts a residual with a
    few dilated residual convolutions. Here the photometric error is taken at :attr:`OFFSETS`
    around the estimate and averaged over 5 x 5 windows: a block matcher's cost profile at full
    resolution. Its soft-argmin over the offsets (temperature learned) is a sub-pixel estimate
    from the start, as a block matcher's sub-pixel fit is; the convolutions, reading the left
    image, the disparity and the unaveraged error, learn to correct the profile's scores where
    the window straddles an edge, and a residual for what no offset explains.

    Output: ``relu(d + Σ softmax(-τ·cost + correction)·offset + residual)``. The correction and
    residual heads start at zero, so the untrained stage already refines.
    """

    #: dilations of the residual blocks: a receptive field of about 60 px at full resolution
    DILATIONS = (1, 2, 4, 8, 1)
    #: disparity offsets (px) at which the warped right image is compared with the left one
    OFFSETS = (-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0)
    #: side of the window the block costs average over (px)
    BLOCK = 5

    def __init__(self, channels: int, max_disp: int):
        super().__init__()
        self.max_disp = max_disp
        k = len(self.OFFSETS)
        # left image, disparity, the error at the estimate, one block cost per offset
        self.stem = conv2d_bn(3 + 1 + 1 + k, channels)
        self.blocks = nn.Sequential(*[ResBlock(channels, d) for d in self.DILATIONS])
        self.out = nn.Conv2d(channels, k + 1, 3, padding=1)       # score corrections, residual
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        # costs are mean absolute differences of normalised images: a 0.1 gap between offsets
        # should weigh e^3 = 20 times
        self.log_temperature = nn.Parameter(torch.tensor(math.log(30.0)))
        self.register_buffer("offsets", torch.tensor(self.OFFSETS).view(1, k, 1, 1), persistent=False)

    def forward(self, left: torch.Tensor, right: torch.Tensor, disparity: torch.Tensor) -> torch.Tensor:
        # left, right (batch, 3, H, W); disparity (batch, H, W) -> refined disparity (batch, H, W)
        # the warps are features here, not a path for gradients into the volume's disparity
        d = disparity.detach()
        errors = torch.cat([(left - warp_right(right, d + off)).abs().mean(dim=1, keepdim=True)
                            for off in self.OFFSETS], dim=1)              # (batch, offsets, H, W)
        centre = errors[:, self.OFFSETS.index(0.0)].unsqueeze(1)          # (batch, 1, H, W)
        costs = F.avg_pool2d(errors, self.BLOCK, stride=1, padding=self.BLOCK // 2,
                             count_include_pad=False)                     # (batch, offsets, H, W)
        x = torch.cat([left, disparity.unsqueeze(1) / self.max_disp, centre, costs], dim=1)
        # channels-last: 8-channel convolutions at full resolution run 2.4x faster on CPU
        x = x.contiguous(memory_format=torch.channels_last)               # (batch, 5 + offsets, H, W)
        y = self.out(self.blocks(self.stem(x)))                           # (batch, offsets + 1, H, W)
        scores = -self.log_temperature.exp() * costs + y[:, :-1]          # (batch, offsets, H, W)
        offset = (torch.softmax(scores, dim=1) * self.offsets).sum(dim=1)  # (batch, H, W)
        return F.relu(disparity + offset + y[:, -1])


# -- the network --------------------------------------------------------------------------------

class StereoNet(nn.Module):
    """Left and right image to stacked disparity maps (coarse to fine; the last is best)."""

    def __init__(self, config: StereoNetConfig | None = None):
        super().__init__()
        self.config = config = config or StereoNetConfig()
        vc = config.volume_channels
        self.features = FeatureExtractor(config.channels)
        self.stem = nn.Sequential(conv3d_bn(config.groups, vc), conv3d_bn(vc, vc))
        self.hourglasses = nn.ModuleList([Hourglass(vc) for _ in OUTPUT_WEIGHTS])
        # one score head per hourglass: (batch, C, D, h, w) -> (batch, 1, D, h, w); a single conv
        # where PSMNet has two, since the head convs run on the full quarter-resolution volume.
        # A 3x3x3 conv to one channel is oneDNN's slowest case on CPU (as slow as an 8-channel
        # one); a 1x1x1 head reads the hourglass's already aggregated features 4-5x faster.
        k = config.head_kernel
        self.heads = nn.ModuleList([nn.Conv3d(vc, 1, k, padding=k // 2) for _ in OUTPUT_WEIGHTS])
        self.refinement = Refinement(config.refine_channels, config.max_disp) if config.refine else None

    def forward(self, left: torch.Tensor, right: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Disparities ``(outputs, batch, H, W)`` for float images ``(batch, 3, H, W)``.

        ``outputs`` is 3 (one per hourglass), or 4 with the refinement (its output last);
        ``last_only`` computes only the prediction, ``(1, batch, H, W)`` (the earlier stages' soft-
        argmins and upsamplings serve only the training loss).

        Raises
        ------
        ValueError
            If the two images differ in shape or their size is not a multiple of 16.
        """
        if left.shape != right.shape or left.ndim != 4 or left.shape[1] != 3:
            raise ValueError(f"StereoNet expects left and right images of the same shape "
                             f"(batch, 3, H, W); got {tuple(left.shape)} and {tuple(right.shape)}")
        h, w = left.shape[-2:]
        check_image_size(h, w)
        cfg = self.config

        # one pass of the shared extractor over both images: (2*batch, C, H/4, W/4); channels-last
        # runs oneDNN's few-channel 2D convolutions 2-3x faster on CPU, as for the 3D stages below
        pair = torch.cat([left, right], dim=0).contiguous(memory_format=torch.channels_last)
        feats = self.features(pair)
        fl, fr = feats.chunk(2, dim=0)
        # candidates k·disp_step px apart: k·disp_step/4 feature pixels
        volume = group_correlation_volume(fl, fr, cfg.num_candidates, cfg.groups,
                                          cfg.disp_step / FEATURE_STRIDE)  # (batch, G, D, H/4, W/4)
        # channels-last: oneDNN's few-channel 3D convolutions (forward and backward) run 2-3x
        # faster in this layout on CPU, and the layout propagates through the 3D stages
        volume = volume.contiguous(memory_format=torch.channels_last_3d)
        x = self.stem(volume)                                             # (batch, vc, D, H/4, W/4)

        disparities = []
        score = None
        for stage, (hourglass, head) in enumerate(zip(self.hourglasses, self.heads)):
            x = hourglass(x)
            # PSMNet's residual costs: each stage refines the previous stage's score
            s = head(x).squeeze(1)                                        # (batch, D, H/4, W/4)
            score = s if score is None else score + s
            if not last_only or stage == len(self.hourglasses) - 1:
                disparities.append(soft_argmin(score, cfg.max_disp, cfg.disp_step, (h, w)))  # (batch, H, W)
        if self.refinement is not None:
            disparities.append(self.refinement(left, right, disparities[-1]))           # (batch, H, W)
        if last_only:
            return disparities[-1].unsqueeze(0)                           # (1, batch, H, W)
        return torch.stack(disparities)                                   # (outputs, batch, H, W)


def fused_for_inference(net: nn.Module) -> nn.Module:
    """A copy of ``net`` in eval mode with each batch norm folded into the convolution before it.

    The same function as ``net.eval()`` up to float rounding, about 10 % faster on CPU: the
    normalisation of the full quarter-resolution volume is a pass over memory of its own.
    """
    net = copy.deepcopy(net).eval()
    for module in net.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            conv, bn = module[i], module[i + 1]
            if isinstance(bn, (nn.BatchNorm2d, nn.BatchNorm3d)) and isinstance(
                    conv, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose3d)):
                module[i] = fuse_conv_bn_eval(conv, bn, transpose=isinstance(conv, nn.ConvTranspose3d))
                module[i + 1] = nn.Identity()
    return net


def disparity_to_depth(disparity: torch.Tensor, focal_baseline: torch.Tensor,
                       min_disparity: float = 1e-3) -> torch.Tensor:
    """Depth ``Z = f·B / d`` per image; ``disparity`` (..., batch, H, W), ``focal_baseline`` (batch,).

    Disparities below ``min_disparity`` are clamped first (as the paper's code clamps at 1e-8)
    so the depth stays finite.
    """
    fb = focal_baseline.view(-1, 1, 1).to(disparity.dtype)
    return fb / disparity.clamp(min=min_disparity)


def stacked_smooth_l1(outputs: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PSMNet's training loss: smooth-L1 of each stacked output on ``mask``, weighted 0.5/0.7/1.0.

    ``outputs`` is ``(outputs, batch, H, W)`` (disparity or depth), ``target`` and ``mask``
    ``(batch, H, W)``; the same function serves the disparity and the depth loss. A fourth
    (refined) output is weighted 1.0 beside the three (:func:`output_weights`).
    """
    total = outputs.new_zeros(())
    for weight, out in zip(output_weights(len(outputs)), outputs):
        total = total + weight * F.smooth_l1_loss(out[mask], target[mask])
    return total
