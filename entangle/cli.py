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
from typing import Any, NoReturn

import hydra
from hydra.experimental.callback import Callback
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

from entangle.tasks import (RunDirError, check_output_dir, output_dir, prepare_output_dir, results_path,
                            write_manifest, write_report)

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
    if cfg.get("write_results", False):   # a bad results_file is refused before any fit
        results_path(cfg, str(cfg.get("name")))
    out = prepare_output_dir(cfg)
    start = time.perf_counter()
    try:
        report = task(cfg)
        report.setdefault("experiment", str(cfg.get("name")))
        report.setdefault("wall_time_s", round(time.perf_counter() - start, 3))
        path = write_report(report, out)
        log.info("report written to %s", path)
        own = _task_summary(cfg, report)
        html = write_html_report(cfg, out, summary=own)
    finally:   # whatever the run wrote is entangle's: a rerun into this dir may replace it
        write_manifest(out)
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

    from entangle.decompose import DecompositionError
    from entangle.hashing import UnhashableError
    from entangle.node import NodeError
    from entangle.store import StoreError
    from entangle.system import InvalidSystemError
    from entangle.tasks import ConfigError
    return (InvalidSystemError, ConfigError, DecompositionError, NodeError, StoreError,
            UnhashableError, OmegaConfBaseException, FileNotFoundError)


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
    out = output_dir(cfg)
    if (out / "report.json").exists():
        return   # never over a report (the guard refuses a sweep into a sweep dir holding some)
    write_report({"status": "failed", "experiment": str(cfg.get("name")),
                  "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}, out)
    write_html_report(cfg, out)
    write_manifest(out)


def _fits_since(cfg: DictConfig, start: float) -> tuple[int, str]:
    """How many fits the store of ``cfg`` gained since ``start`` (a time), and its root."""
    from entangle.store import Store
    try:
        store = Store(cfg.store.root)
    except Exception:  # no store configured: nothing was fitted into one
        return 0, "no store"
    kept = sum(1 for key in store.keys() if (store.path(key) / "meta.json").stat().st_mtime >= start)
    return kept, str(store.root)


def run_job(cfg: DictConfig) -> None:
    """One run from the command line: the errors a user can act on end it with one line (exit 2,
    an interrupt 130), a failed answer with exit 1; in a sweep a failing job is recorded."""
    start = time.time() - 1.0   # file times are coarse on some file systems
    try:
        run(cfg)
    except TaskFailed as err:
        print(f"entangle: error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        kept, root = _fits_since(cfg, start)
        print(f"entangle: interrupted: {kept} fits are kept in the store ({root}); the same command "
              "resumes from them", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        # a sweep goes on past a failing job (Hydra's launchers abort it otherwise), not past a
        # refused run dir
        if _in_multirun() and not isinstance(err, RunDirError):
            _record_failure(cfg, err)
            return
        if not isinstance(err, _user_errors()) or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"entangle: error: {err}", file=sys.stderr)
        print("(set HYDRA_FULL_ERROR=1 for the traceback; everything already stored is kept)",
              file=sys.stderr)
        sys.exit(2)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    _restore_full_error()
    run_job(cfg)


class RunDirGuard(Callback):
    """Refuses a run dir (:func:`~entangle.tasks.check_output_dir`), or a ``--multirun`` into a
    sweep dir holding job reports of an earlier sweep, before Hydra writes anything there (exit
    2); ``overwrite=true`` lets a run replace what entangle wrote."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_dir = Path(os.path.abspath(str(config.hydra.run.dir)))
        try:
            check_output_dir(run_dir, bool(config.get("overwrite", False)), hydra=config.hydra)
        except RunDirError as err:
            _refuse(str(err))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(os.path.abspath(str(config.hydra.sweep.dir)))
        reports = sorted(p.relative_to(sweep).as_posix() for p in sweep.rglob("report.json"))
        if reports and not config.get("overwrite", False):
            _refuse(f"the sweep dir {sweep} already holds the reports of an earlier sweep "
                    f"({', '.join(reports[:3])}{', ...' if len(reports) > 3 else ''}): choose another "
                    "(hydra.sweep.dir=DIR) or pass overwrite=true to replace them")


def _refuse(message: str) -> NoReturn:
    """End the command on a user's error, in one line (exit 2)."""
    print(f"entangle: error: {message}", file=sys.stderr)
    sys.exit(2)


#: the user's HYDRA_FULL_ERROR, set aside while Hydra composes the config (see _run_hydra)
_user_full_error: list[str | None] = []


def _restore_full_error() -> None:
    """Give the user's HYDRA_FULL_ERROR back once the config is composed."""
    while _user_full_error:
        value = _user_full_error.pop()
        if value is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = value


def _yaml_error_line(err: Exception) -> str:
    """``FILE:LINE:COL: what is wrong`` of a YAML syntax error."""
    mark = err.problem_mark
    problem = str(err.problem)
    if "'\\t'" in problem:
        problem = "found a tab character where YAML allows none (indent with spaces)"
    return f"{mark.name}:{mark.line + 1}:{mark.column + 1}: {problem}"


def _run_hydra() -> None:
    """Hydra's app; a config file that is not valid YAML is said in one line (exit 2).

    Hydra prints an error of composing with a long traceback of its own, so HYDRA_FULL_ERROR is
    set while it composes (the error comes here) and the user's value is restored for the run.
    """
    import traceback

    import yaml
    from hydra.errors import CompactHydraException
    from omegaconf.errors import OmegaConfBaseException

    _user_full_error.append(os.environ.get("HYDRA_FULL_ERROR"))
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _hydra_main()
    except Exception as err:
        composing = bool(_user_full_error)
        _restore_full_error()
        if not composing or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
            print(f"entangle: error: {_yaml_error_line(err)}", file=sys.stderr)
            sys.exit(2)
        if isinstance(err, CompactHydraException):   # as Hydra reports it
            cause = err.__cause__ if isinstance(err.__cause__, OmegaConfBaseException) else None
            print(err, *([cause] if cause else []), sep="\n", file=sys.stderr)
        else:
            traceback.print_exception(err)
        sys.exit(1)
    except KeyboardInterrupt:
        print("entangle: interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        _restore_full_error()


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
    _run_hydra()


if __name__ == "__main__":
    main()
