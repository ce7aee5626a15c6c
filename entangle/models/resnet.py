"""The paper's ResNet-18 upstream, as a node: torchvision's ImageNet ResNet-18 on 32x32 images.

Wu et al.'s loss-function, data-distribution and entanglement experiments train
``torchvision.models.resnet18(num_classes=...)`` on SVHN's 32x32 images (``utils.get_model``);
only the hypothesis-space experiment uses the small ConvNet. The ImageNet stem (a 7x7 stride-2
convolution and a stride-2 max-pool) leaves a 32x32 image at 8x8 before the four stages, so a
200-epoch fit on 3,000 images costs minutes on a CPU, not hours. The downstream reads the
512-wide average-pooled features (the paper replaces ``fc`` by the identity). The network is
written out here rather than imported: torchvision's wheel is built per torch variant, and the
architecture is a few lines; a test checks it against torchvision's parameter count.

Training, checkpoints, augmentation and the features output are :class:`ConvNetNode`'s: only the
network differs. The ConvNet module is left untouched so its stored fits keep their keys.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from entangle.models.convnet import ConvNetNode, training_rows
from entangle.models.mlp import MLP


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                            nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    """torchvision's ``resnet18`` (ImageNet stem, stages of 64-512 channels, two blocks each,
    Kaiming-normal convolutions), its ``fc`` an :class:`~entangle.models.mlp.MLP` head with
    ``hidden`` layers. ``forward`` returns ``(out, feat)``: the head's output and the pooled
    512-wide features (the head's input), as :class:`~entangle.models.convnet.ConvNet` does."""

    feat_dim = 512

    def __init__(self, out_features: int, *, size: int = 32, in_channels: int = 3,
                 hidden: Sequence[int] = ()):
        super().__init__()
        del size  # the pooling makes the features' width independent of the image's size
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        blocks, c_in = [], 64
        for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.stages = nn.Sequential(*blocks)
        self.head = MLP(self.feat_dim, [int(h) for h in hidden], int(out_features))
        for m in self.modules():   # torchvision's initialization of the trunk
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x: (batch, 3, H, W)
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)  # (batch, 64, H/4, W/4)
        x = self.stages(x)                                            # (batch, 512, H/32, W/32)
        feat = x.mean(dim=(2, 3))                                     # (batch, 512)
        return self.head(feat), feat


class ResNet18Node(ConvNetNode):
    """The paper's ResNet-18 upstream: :class:`ConvNetNode`'s training and outputs (``pred``,
    ``proba``, the 512-wide ``feat``) around :class:`ResNet18`.

    Parameters are :class:`ConvNetNode`'s without ``channels`` (the widths are ResNet-18's).
    With ``epochs``, a pass whose last minibatch would hold one row is refused before training:
    batch norm cannot train on one row at the 1x1 last stage.
    """

    version = "1"

    def __init__(self, *, task: str = "classification", hidden: Sequence[int] = (),
                 steps: int = 200, evals: int = 10, epochs: int | None = None,
                 checkpoint: str = "best", crop: int = 0, flip: bool = False, lr: float = 1e-3,
                 batch_size: int = 128, weight_decay: float = 0.0, subsample: float = 1.0,
                 features: bool = True, device: str = "auto"):
        super().__init__(task=task, hidden=hidden, steps=steps, evals=evals, epochs=epochs,
                         checkpoint=checkpoint, crop=crop, flip=flip, lr=lr,
                         batch_size=batch_size, weight_decay=weight_decay, subsample=subsample,
                         features=features, device=device)
        del self.channels   # not a parameter of this network

    def fit(self, inputs, targets, *, seed):
        held = inputs.get("holdout")
        pool = (len(inputs["image"]) if held is None
                else int((~np.asarray(held).astype(bool)).sum()))
        rows, batch = training_rows(pool, self.subsample), int(self.batch_size)
        if self.epochs is not None and rows > batch and rows % batch == 1:
            raise ValueError(
                f"ResNet18Node: {rows} training rows in minibatches of {batch} leave a last minibatch "
                f"of one row, on which batch norm cannot train (ResNet-18's last stage is 1x1 on "
                f"these images); change batch_size or subsample")
        return super().fit(inputs, targets, seed=seed)

    def _build(self, size: int, out_features: int) -> ResNet18:
        return ResNet18(out_features, size=size, hidden=tuple(self.hidden))
