"""Hydra entry point: ``python -m entangle experiment=NAME [overrides]``.

The app only resolves the experiment's ``task`` (a ``run(cfg) -> dict`` function), calls it, and
writes the returned dict as ``report.json`` in the run dir; everything else lives in the task.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import hydra
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

from entangle.tasks import output_dir, write_report

log = logging.getLogger("entangle")

#: the project's config tree (``conf/`` beside the package; an editable install keeps it there).
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def run(cfg: DictConfig) -> dict:
    """Run the experiment named by ``cfg.task`` and write its ``report.json``; returns the report."""
    task = get_method(str(cfg.task))
    start = time.perf_counter()
    report = task(cfg)
    report.setdefault("experiment", str(cfg.get("name")))
    report.setdefault("wall_time_s", round(time.perf_counter() - start, 3))
    out = output_dir(cfg)
    path = write_report(report, out)
    log.info("report written to %s", path)
    return report


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's input, reported as one clear message without a traceback."""
    from omegaconf.errors import OmegaConfBaseException

    from entangle.hashing import UnhashableError
    from entangle.node import NodeError
    from entangle.store import StoreError
    from entangle.system import InvalidSystemError
    from entangle.tasks import ConfigError
    return (InvalidSystemError, ConfigError, NodeError, StoreError, UnhashableError,
            OmegaConfBaseException, FileNotFoundError)


def _in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:
        return False


def _record_failure(cfg: DictConfig, err: BaseException) -> None:
    """In a sweep, a failing job writes a failed report.json and the sweep goes on."""
    import traceback
    log.error("job failed: %s: %s", type(err).__name__, err)
    write_report({"status": "failed", "experiment": str(cfg.get("name")),
                  "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()},
                 output_dir(cfg))


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except Exception as err:
        if _in_multirun():  # Hydra's launchers abort the whole sweep otherwise
            _record_failure(cfg, err)
            return
        if not isinstance(err, _user_errors()) or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"entangle: error: {err}", file=sys.stderr)
        print("(set HYDRA_FULL_ERROR=1 for the traceback; everything already stored is kept)",
              file=sys.stderr)
        sys.exit(2)


def main() -> None:
    """Console entry point: ``entangle store ...`` manages the store; anything else is Hydra."""
    if sys.argv[1:2] == ["store"]:
        from entangle.store_cli import main as store_main
        sys.exit(store_main(sys.argv[2:]))
    _hydra_main()


if __name__ == "__main__":
    main()
