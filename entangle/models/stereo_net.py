"""A small stereo network of the PSMNet family, sized to train on a CPU in minutes.

Read top to bottom: a 2D feature extractor at 1/4 resolution, a group-wise correlation cost
volume (GwcNet's cheaper cousin of PSMNet's concatenation volume) over ``max_disp / 4``
candidate disparities, three stacked 3D hourglasses that each emit a matching cost, and a
soft-argmin that turns each cost into a disparity. The three disparities come out stacked so
that training can weigh them 0.5, 0.7 and 1.0, as PSMNet does; the last one is the prediction.

The network predicts *disparity* only. Depth is always ``Z = f·B / d``, computed outside, so a
disparity loss and a depth loss train the very same network (the one difference between u and
u' in the reference case study).

Sizes: the feature extractor halves the image twice and each hourglass halves the volume twice
more, so height, width and ``max_disp`` must be multiples of 16 (:data:`SIZE_MULTIPLE`); any
other size raises :class:`ValueError` with the offending numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

#: Height, width and max_disp must be multiples of this (1/4 features, then 1/4 in the hourglass).
SIZE_MULTIPLE = 16
#: Downsampling of the feature maps and of the cost volume relative to the image.
FEATURE_STRIDE = 4
#: Loss weights of the three stacked outputs (PSMNet's 0.5, 0.7, 1.0; the last is the prediction).
OUTPUT_WEIGHTS = (0.5, 0.7, 1.0)


@dataclass(frozen=True)
class StereoNetConfig:
    """Sizes of :class:`StereoNet`; frozen so a config can be hashed and shared."""

    max_disp: int = 64          # disparities searched at full resolution: [0, max_disp)
    channels: int = 16          # 2D feature channels at 1/4 resolution
    groups: int = 4             # correlation groups of the cost volume (channels % groups == 0)
    volume_channels: int = 8    # channels of the 3D convolutions over the cost volume

    def __post_init__(self) -> None:
        if self.max_disp <= 0 or self.max_disp % SIZE_MULTIPLE:
            raise ValueError(f"StereoNetConfig.max_disp must be a positive multiple of "
                             f"{SIZE_MULTIPLE}, got {self.max_disp}")
        if self.channels <= 0 or self.groups <= 0 or self.channels % self.groups:
            raise ValueError(f"StereoNetConfig.channels ({self.channels}) must be a positive "
                             f"multiple of groups ({self.groups})")
        if self.volume_channels <= 0:
            raise ValueError(f"StereoNetConfig.volume_channels must be positive, got {self.volume_channels}")


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


def group_correlation_volume(left: torch.Tensor, right: torch.Tensor, num_disp: int,
                             groups: int) -> torch.Tensor:
    """Group-wise correlation cost volume (GwcNet): one correlation per channel group and shift.

    ``volume[b, g, d, y, x]`` correlates left pixel ``x`` with right pixel ``x - d``; where the
    shifted pixel falls off the image the volume stays zero.
    """
    b, c, h, w = left.shape
    # (batch, groups, channels/groups, H, W)
    lg = left.view(b, groups, c // groups, h, w)
    rg = right.view(b, groups, c // groups, h, w)
    volume = left.new_zeros(b, groups, num_disp, h, w)   # (batch, groups, disparities, H, W)
    for d in range(num_disp):
        if d == 0:
            volume[:, :, 0] = (lg * rg).mean(dim=2)
        elif d < w:
            volume[:, :, d, :, d:] = (lg[..., d:] * rg[..., :-d]).mean(dim=2)
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
        # x: (batch, C, D, h, w) with D, h, w the quarter-resolution volume sizes
        a = self.down1(x)                  # (batch, 2C, D/2, h/2, w/2)
        b = self.down2(a)                  # (batch, 2C, D/4, h/4, w/4)
        a = F.relu(self.up1(b) + a)        # (batch, 2C, D/2, h/2, w/2)
        return F.relu(self.up2(a) + x)     # (batch, C, D, h, w)


def soft_argmin(cost: torch.Tensor, max_disp: int, size: tuple[int, int]) -> torch.Tensor:
    """Disparity as the softmax-weighted mean of candidate disparities, upsampled to full size.

    The quarter-resolution score ``(batch, D/4, h, w)`` is interpolated along the disparity axis
    to all ``max_disp`` integer candidates, turned into a distribution by a softmax and reduced
    to its expectation (differentiable and sub-pixel); the disparity map is then upsampled
    bilinearly to the image size. PSMNet instead upsamples the whole volume trilinearly to full
    resolution before the softmax: that costs 16x more memory and two thirds of a CPU training
    step here, for the same quarter-resolution information. The heads learn a matching *score*,
    so the softmax takes it unnegated (PSMNet negates a cost).
    """
    b, _, h, w = cost.shape
    # (batch, 1, D/4, h, w) -> (batch, max_disp, h, w): one score per full-resolution disparity
    cost = F.interpolate(cost.unsqueeze(1), size=(max_disp, h, w), mode="trilinear",
                         align_corners=False).squeeze(1)
    prob = torch.softmax(cost, dim=1)                                    # (batch, max_disp, h, w)
    candidates = torch.arange(max_disp, dtype=prob.dtype, device=prob.device).view(1, -1, 1, 1)
    disparity = (prob * candidates).sum(dim=1, keepdim=True)             # (batch, 1, h, w)
    # disparities are in full-resolution pixels already; only the grid is upsampled
    return F.interpolate(disparity, size=size, mode="bilinear", align_corners=False).squeeze(1)


# -- the network --------------------------------------------------------------------------------

class StereoNet(nn.Module):
    """Left and right image to three stacked disparity maps (coarse to fine; the last is best)."""

    def __init__(self, config: StereoNetConfig | None = None):
        super().__init__()
        self.config = config = config or StereoNetConfig()
        vc = config.volume_channels
        self.features = FeatureExtractor(config.channels)
        self.stem = nn.Sequential(conv3d_bn(config.groups, vc), conv3d_bn(vc, vc))
        self.hourglasses = nn.ModuleList([Hourglass(vc) for _ in OUTPUT_WEIGHTS])
        # one score head per hourglass: (batch, C, D, h, w) -> (batch, 1, D, h, w); a single conv
        # where PSMNet has two, since the head convs run on the full quarter-resolution volume
        self.heads = nn.ModuleList([nn.Conv3d(vc, 1, 3, padding=1) for _ in OUTPUT_WEIGHTS])

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """Disparities ``(3, batch, H, W)`` for float images ``(batch, 3, H, W)``.

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
        num_disp = cfg.max_disp // FEATURE_STRIDE

        # one pass of the shared extractor over both images: (2*batch, C, H/4, W/4)
        feats = self.features(torch.cat([left, right], dim=0))
        fl, fr = feats.chunk(2, dim=0)
        volume = group_correlation_volume(fl, fr, num_disp, cfg.groups)  # (batch, G, D/4, H/4, W/4)
        # channels-last: oneDNN's few-channel 3D convolutions (forward and backward) run 2-3x
        # faster in this layout on CPU, and the layout propagates through the 3D stages
        volume = volume.contiguous(memory_format=torch.channels_last_3d)
        x = self.stem(volume)                                             # (batch, vc, D/4, H/4, W/4)

        disparities = []
        cost = None
        for hourglass, head in zip(self.hourglasses, self.heads):
            x = hourglass(x)
            # PSMNet's residual costs: each stage refines the previous stage's cost
            c = head(x).squeeze(1)                                        # (batch, D/4, H/4, W/4)
            cost = c if cost is None else cost + c
            disparities.append(soft_argmin(cost, cfg.max_disp, (h, w)))  # (batch, H, W)
        return torch.stack(disparities)                                   # (3, batch, H, W)


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

    ``outputs`` is ``(3, batch, H, W)`` (disparity or depth), ``target`` and ``mask``
    ``(batch, H, W)``; the same function serves the disparity and the depth loss.
    """
    total = outputs.new_zeros(())
    for weight, out in zip(OUTPUT_WEIGHTS, outputs):
        total = total + weight * F.smooth_l1_loss(out[mask], target[mask])
    return total
