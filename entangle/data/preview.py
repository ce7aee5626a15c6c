"""Figures that show a reader what stereo samples look like: image, disparity, labelled boxes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from entangle.data.kitti import Sample, difficulty

log = logging.getLogger(__name__)

#: box colours per class (matplotlib names)
CLASS_COLORS = {"Car": "tab:orange", "Pedestrian": "tab:cyan", "DontCare": "0.6"}


def sample_grid(samples: Sequence[Sample], path: str | Path, *, dpi: int = 90) -> Path:
    """One row per sample: left image with 2D boxes (class, difficulty), then its disparity."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n = len(samples)
    if n == 0:
        raise ValueError("sample_grid needs at least one sample")
    h, w = samples[0].left.shape[:2]
    fig, axes = plt.subplots(n, 2, figsize=(2 * 4.2, n * 4.2 * h / w + 0.3), squeeze=False)
    vmax = max(float(np.nanmax(s.disparity)) if s.disparity is not None else 1.0 for s in samples)
    for row, s in zip(axes, samples):
        row[0].imshow(s.left)
        for o in s.objects:
            x1, y1, x2, y2 = o.bbox
            color = CLASS_COLORS.get(o.type, "w")
            row[0].add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=0.8,
                                       edgecolor=color))
            level = difficulty(o, h)
            tag = "DC" if o.type == "DontCare" else "EMH"[level] if level >= 0 else "-"
            row[0].text(x1, y1 - 1, tag, color=color, fontsize=5)
        row[0].set_title(f"{s.id}: left image, boxes (E/M/H difficulty)", fontsize=7)
        if s.disparity is not None:
            d = np.where(s.disparity > 0, s.disparity, np.nan)
            im = row[1].imshow(d, cmap="magma", vmin=0, vmax=vmax)
            row[1].set_title("disparity (px); sky invalid", fontsize=7)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(im, ax=axes[:, 1].tolist(), shrink=0.6, pad=0.01)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path
