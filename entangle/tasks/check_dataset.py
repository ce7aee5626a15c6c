"""Validate a KITTI-layout folder: ``experiment=check_dataset data.root=DIR [data.split=NAME]``.

The report lists counts per class and difficulty over the frames that passed, and one entry per
problem (file, line, field, what is wrong); bad frames are skipped, the rest still count.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from entangle.data.checks import check_layout
from entangle.tasks import ConfigError

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    """Check ``data.root`` (all frames, or those of ``data.split``) and return the report."""
    data = cfg.get("data")
    if data is None or data.get("root") in (None, "???"):
        raise ConfigError("check_dataset needs data.root=DIR (a KITTI object or stereo folder)")
    root = Path(str(data.root))
    if not root.exists():
        raise ConfigError(f"data.root={root} does not exist")
    split = data.get("split")
    report = check_layout(root, split=str(split) if split else None)
    for p in report.problems[:20]:
        where = p.file + (f":{p.line}" if p.line else "")
        log.warning("%s: %s%s", where, p.message, f" (field {p.field})" if p.field else "")
    if len(report.problems) > 20:
        log.warning("... and %d more problems (see report.json)", len(report.problems) - 20)
    log.info("%d frames checked, %d valid, %d problems", report.n_frames,
             len(report.valid_ids), len(report.problems))
    out = report.to_dict()
    if report.problems or not report.valid_ids:
        # the report is written all the same; the command then exits non-zero (see cli.run)
        out["failed"] = (f"{root}: {len(report.problems)} problem(s) in {report.n_frames} frame(s), "
                         f"{len(report.valid_ids)} valid" + ("" if report.valid_ids else ": no valid frame"))
    return out
