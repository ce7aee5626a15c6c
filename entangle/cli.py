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

from entangle.tasks import output_dir, prepare_output_dir, write_report

log = logging.getLogger("entangle")

#: the project's config tree (``conf/`` beside the package; an editable install keeps it there).
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


class TaskFailed(RuntimeError):
    """A task finished and wrote its report, but its answer is a failure (``report["failed"]``:
    a dataset check that found problems); the command exits 1."""


def run(cfg: DictConfig) -> dict:
    """Run the experiment named by ``cfg.task``, write ``report.json`` and ``report.html``.

    Returns the report. A one-screen summary (the answer, verdicts, where the report is) is
    logged at the end. A report holding ``failed`` (a message) is written whole, then
    :class:`TaskFailed` is raised, so the command exits non-zero.
    """
    task = get_method(str(cfg.task))
    prepare_output_dir(cfg)
    start = time.perf_counter()
    report = task(cfg)
    report.setdefault("experiment", str(cfg.get("name")))
    report.setdefault("wall_time_s", round(time.perf_counter() - start, 3))
    out = output_dir(cfg)
    path = write_report(report, out)
    log.info("report written to %s", path)
    own = _task_summary(cfg, report)
    html = write_html_report(cfg, out, summary=own)
    _log_summary(path, html, own)
    if report.get("failed"):
        raise TaskFailed(f"{report['failed']} (report: {path})")
    return report


def _task_summary(cfg: DictConfig, report: dict) -> list[str]:
    """The task module's own ``summary_lines(report)``, where it defines one (else nothing)."""
    import importlib
    try:
        module = importlib.import_module(str(cfg.task).rsplit(".", 1)[0])
        fn = getattr(module, "summary_lines", None)
        return [str(line) for line in fn(report)] if callable(fn) else []
    except Exception:  # a summary is a courtesy: never fail a finished run for it
        log.debug("no task summary", exc_info=True)
        return []


def _pipeline_graph(cfg: DictConfig):
    """The graph of ``cfg.pipeline`` from its wiring alone (None when there is no pipeline)."""
    from entangle.report.dag import pipeline_graph
    try:
        nodes = cfg.get("pipeline", {}).get("nodes") if cfg.get("pipeline") is not None else None
        if nodes is None:
            return None
        return pipeline_graph(OmegaConf.to_container(nodes, resolve=False))
    except Exception as err:  # a drawing aid only: never fail a run for it
        log.debug("no pipeline graph for the report: %s", err)
        return None


def write_html_report(cfg: DictConfig, out: Path, summary: list[str] | None = None) -> Path | None:
    """Render ``report.html`` from the run dir's ``report.json``; a rendering error is logged, not raised.

    The experiment's results are already safe in report.json, so a report that cannot be drawn
    must not turn a long run into a failure.
    """
    from entangle.report.html import render_run_dir
    try:
        path = render_run_dir(out, graph=_pipeline_graph(cfg), summary=summary)
    except Exception:
        log.warning("could not write report.html (report.json is complete)", exc_info=True)
        return None
    log.info("report page written to %s", path)
    return path


def _log_summary(json_path: Path, html: Path | None, own: list[str] | None = None) -> None:
    import json

    from entangle.report.summary import summary_lines
    try:
        report = json.loads(Path(json_path).read_text())
        lines = summary_lines(report, html=html, json_path=json_path, own=own)
    except Exception:
        log.warning("could not summarise the report", exc_info=True)
        return
    log.info("summary\n%s", "\n".join(lines))


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
    write_html_report(cfg, output_dir(cfg))


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except TaskFailed as err:
        print(f"entangle: error: {err}", file=sys.stderr)
        sys.exit(1)
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


def _config_dirs(argv: list[str]) -> list[str]:
    """The project's config dir and any ``--config-dir``/``-cd`` given on the command line."""
    dirs = [CONFIG_DIR]
    for i, arg in enumerate(argv):
        if arg in ("--config-dir", "-cd") and i + 1 < len(argv):
            dirs.append(argv[i + 1])
        elif arg.startswith("--config-dir="):
            dirs.append(arg.split("=", 1)[1])
    return dirs


def _help(argv: list[str]) -> bool:
    """``--help``: list the experiments; with ``experiment=NAME``, describe it, then Hydra's help."""
    if not any(a in ("--help", "-h") for a in argv):
        return False
    from entangle.report.summary import experiment_help, experiments
    dirs = _config_dirs(argv)
    chosen = [a.split("=", 1)[1] for a in argv if a.startswith("experiment=")]
    if not chosen:
        print(experiment_help(dirs), end="")
        return True
    found = experiments(dirs)
    if chosen[-1] in found:
        path, text = found[chosen[-1]]
        print(f"experiment {chosen[-1]} ({path.name}):\n{text}\n")
    return False  # Hydra's help follows: the config groups and the composed config


def main() -> None:
    """Console entry point: ``entangle store ...`` manages the store; ``--help`` lists the
    experiments; anything else is Hydra."""
    if sys.argv[1:2] == ["store"]:
        from entangle.store_cli import main as store_main
        sys.exit(store_main(sys.argv[2:]))
    if _help(sys.argv[1:]):
        return
    if not Path(CONFIG_DIR).is_dir():
        print(f"entangle: its configs are not at {CONFIG_DIR}: entangle runs from a checkout of "
              "its repository, installed editable (`pip install -e .` in the clone), which keeps "
              "conf/ beside the package", file=sys.stderr)
        sys.exit(2)
    _hydra_main()


if __name__ == "__main__":
    main()
