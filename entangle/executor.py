"""Runs a system over seeds: every node is fitted once per key, its results published to the store.

A node runs when its inputs are available; a node whose key the store already holds is served
from it (a hit) and never refitted. Sources are loaded on demand and cheap plain functions
(:class:`~entangle.node.FunctionNode`) are recomputed rather than stored.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import sys
import time
import weakref
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Iterable, Mapping

import numpy as np

from entangle.node import BaseNode, NodeError, Ragged
from entangle.store import CorruptEntryError, Store
from entangle.system import System, node_seed, parse_ref, predict_splits, stores_predictions

log = logging.getLogger(__name__)


def check_seeds(seeds: Any) -> list[int]:
    """Seeds as a list of distinct non-negative ints; ``ValueError`` saying what is wrong otherwise.

    Repeated seeds would enter a paired interval as independent pairs and shrink it; a float
    would be truncated to another seed; so neither is coerced.
    """
    if seeds is None or isinstance(seeds, (str, bytes, int, float)) or not hasattr(seeds, "__iter__"):
        raise ValueError(f"seeds must be a list of distinct non-negative integers, e.g. [0, 1, 2]; "
                         f"got {seeds!r}")
    seeds = list(seeds)
    bad = [s for s in seeds if isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)) or s < 0]
    if bad or not seeds:
        raise ValueError(f"seeds must be a non-empty list of distinct non-negative integers, e.g. "
                         f"[0, 1, 2]; got {seeds!r}{f' ({bad[0]!r} is not)' if bad else ''}")
    repeated = sorted({int(s) for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"seeds must be distinct (a repeated seed is not an independent run); "
                         f"got {seeds!r}, where {repeated} repeat")
    return [int(s) for s in seeds]


def _length(value: Any) -> int | None:
    """Samples in a node value (rows of an array or a Ragged); None for a scalar."""
    if isinstance(value, Ragged):
        return len(value)
    shape = getattr(value, "shape", None)
    if shape is not None:
        return int(shape[0]) if len(shape) else None
    try:
        return len(value)
    except TypeError:
        return None


def _common_length(values: Mapping[str, Any]) -> int | None:
    """The sample count shared by ``values`` (the first that has one), or None."""
    for v in values.values():
        n = _length(v)
        if n is not None:
            return n
    return None


def check_finite(value: Any, where: str) -> None:
    """Raise :class:`NodeError` naming ``where`` and the first sample if a float value has NaN/inf."""
    arr = value.values if isinstance(value, Ragged) else value
    if isinstance(arr, np.ndarray) and arr.dtype.kind == "f" and arr.size:
        bad = ~np.isfinite(arr)
        if bad.any():
            first = int(np.argwhere(bad)[0][0])
            if isinstance(value, Ragged):
                first = int(np.searchsorted(value.offsets, first, side="right") - 1)
            raise NodeError(f"{where}: {int(bad.sum())} NaN/inf values (first in sample {first})")


class Run:
    """One system at one seed: cache keys, lazily loaded values, metrics and fitted nodes.

    Everything a node hands back crosses a checked boundary here: outputs are finite and hold one
    row per sample of the split (the producer is named otherwise), per-sample losses are finite
    and one per sample, metrics are finite; an error names node, seed, system and split.
    """

    def __init__(self, system: System, seed: int, store: Store):
        self.system = system
        self.seed = int(seed)
        self.store = store
        self.keys = system.keys(self.seed)
        self._values: dict[tuple[str, str], dict[str, Any]] = {}
        self._fitted: dict[str, BaseNode] = {}
        self._ensured: set[str] = set()

    def where(self, name: str, split: str | None = None, extra: str = "") -> str:
        """``node 'X' (seed S, old system, split 'P')``: how errors and log lines name a node."""
        return self.where_static(self.system, name, self.seed, split, extra)

    @staticmethod
    def where_static(system: System, name: str, seed: int, split: str | None = None,
                     extra: str = "") -> str:
        spec = system.specs.get(name)
        own = node_seed(spec, seed) if spec is not None else seed
        parts = [f"seed {seed if own is None else own}"]
        if system.label:
            parts.append(system.label)
        if split is not None:
            parts.append(f"split {split!r}")
        if extra:
            parts.append(extra)
        kind = "source" if spec is not None and spec.node.is_source else "node"
        return f"{kind} {name!r} ({', '.join(parts)})"

    # -- running ----------------------------------------------------------------------------
    def ensure(self, name: str) -> None:
        """Make sure ``name``'s entry is in the store (fit it if not); counts hits and misses.

        A stored entry is checked (checksums, once per process); a corrupt one is removed, said
        in the log, and refitted like a miss.
        """
        spec = self.system.specs[name]
        if not stores_predictions(spec.node) or name in self._ensured:
            return
        self._ensured.add(name)
        key = self.keys[name]
        if self.store.has(key):
            try:
                self.store.check(key)
            except CorruptEntryError as err:
                log.warning("%s: %s; removing it and fitting again", self.where(name), err)
                self.store.remove(key)
            else:
                self.store.record(key, hit=True)
                return
        self.store.record(key, hit=False)
        self._fit_and_publish(name)

    def run_all(self) -> "Run":
        """Ensure every node in topological order; a node's values leave memory once its last
        reader is done (later reads come back from the store or are recomputed), so a run holds
        what the next fits read, not everything the system has produced."""
        order = self.system.topological_order()
        last_reader = {up: i for i, name in enumerate(order) for up in self.system.graph.predecessors(name)}
        for i, name in enumerate(order):
            self.ensure(name)
            # <= rather than ==: a function node's inputs are read when *its* reader is fitted
            for key in [k for k in self._values if last_reader.get(k[0], -1) <= i]:
                del self._values[key]
        return self

    def _fit_and_publish(self, name: str) -> None:
        spec = self.system.specs[name]
        node = spec.node.clone()
        where = self.where(name)
        seed = node_seed(spec, self.seed)
        seed = self.seed if seed is None else seed
        fit_inputs, fit_targets = self._gather_checked(name, spec.fit_split)
        if spec.init is not None:
            start_from = self.fitted(spec.init)
            try:
                node.init_from(start_from)
            except Exception as err:
                raise NodeError(f"{where} cannot start from node {spec.init!r}: "
                                f"{type(err).__name__}: {err}") from err
        log.info("fitting %s on split %r", where, spec.fit_split)
        start = time.perf_counter()
        try:
            fitted = node.fit(fit_inputs, fit_targets, seed=seed)
        except NodeError as err:
            raise NodeError(f"{where} failed while fitting: {err}") from err
        except Exception as err:
            raise NodeError(f"{where} failed while fitting: {type(err).__name__}: {err}") from err
        if fitted is not node:
            raise NodeError(f"{where}: fit must return self (scikit-learn convention)")
        fit_s = time.perf_counter() - start
        arrays: dict[str, Any] = {}
        metrics: dict[str, dict[str, float]] = {}
        for split in predict_splits(self.system, name):
            preds = self._predict(node, name, split)
            for out, value in preds.items():
                arrays[f"pred/{split}/{out}"] = value
            if spec.targets:
                loss, metrics[split] = self._evaluate(node, name, split, preds)
                arrays[f"loss/{split}"] = loss
        for extra, value in getattr(node, "extra_arrays", lambda: {})().items():
            arrays[f"extra/{extra}"] = value
        meta = {
            "node": name, "class": f"{type(node).__module__}.{type(node).__qualname__}",
            "params": repr(node.get_params()), "seed": seed, "fit_split": spec.fit_split,
            "metric": node.metric, "higher_is_better": bool(node.higher_is_better),
            "metrics": metrics, "fit_seconds": round(fit_s, 4),
        }
        self.store.put(self.keys[name], meta=meta, state=node.state_dict(), arrays=arrays)
        self._fitted[name] = node

    def _evaluate(self, node: BaseNode, name: str, split: str, preds: Mapping[str, Any],
                  targets: Mapping[str, Any] | None = None) -> tuple[np.ndarray, dict[str, float]]:
        """Per-sample losses and metrics of ``node`` on ``split``, checked: finite, one loss per sample."""
        where = self.where(name, split)
        if targets is None:
            _, targets = self._gather_checked(name, split, inputs=False)
        n = _common_length(preds)
        items = "sample of the split"
        try:
            declared = node.loss_items(targets)
            if declared is not None:
                n, items = int(declared), "item the node declares (loss_items)"
            loss = np.asarray(node.loss(preds, targets), dtype=np.float64)
            scores = node.score(preds, targets)
        except NodeError as err:
            raise NodeError(f"{where} failed while scoring: {err}") from err
        except Exception as err:
            raise NodeError(f"{where} failed while scoring: {type(err).__name__}: {err}") from err
        if loss.ndim != 1 or (n is not None and len(loss) != n):
            raise NodeError(f"{where}: loss() returned shape {loss.shape}; it must hold one value per "
                            f"{items} ({n})")
        bad = np.flatnonzero(~np.isfinite(loss))
        if bad.size:
            raise NodeError(f"{where}: loss() returned {bad.size} NaN/inf values (first for sample "
                            f"{int(bad[0])}); a per-sample loss must be finite")
        try:
            metrics = {str(k): float(v) for k, v in dict(scores).items()}
        except (TypeError, ValueError) as err:
            raise NodeError(f"{where}: score() must return named numbers: {err}") from err
        if node.metric not in metrics:
            raise NodeError(f"{where}: score() did not return its metric {node.metric!r} "
                            f"(it returned {sorted(metrics)})")
        nonfinite = sorted(k for k, v in metrics.items() if not math.isfinite(v))
        if node.metric in nonfinite:
            raise NodeError(f"{where}: score() returned {metrics[node.metric]} for its metric "
                            f"{node.metric!r}; metrics must be finite")
        if nonfinite:   # secondary metrics (e.g. AP of a class absent from a split) may be undefined
            log.debug("%s: metrics %s are not finite", where, nonfinite)
        return loss, metrics

    def _predict(self, node: BaseNode, name: str, split: str,
                 inputs: Mapping[str, Any] | None = None, extra: str = "") -> dict[str, Any]:
        """``node.predict`` on ``split``, checked: finite outputs, one row per sample."""
        where = self.where(name, split, extra)
        if inputs is None:
            inputs, _ = self._gather_checked(name, split, targets=False)
        n = _common_length(inputs)
        try:
            preds = node.predict(inputs)
        except NodeError as err:
            raise NodeError(f"{where} failed while predicting: {err}") from err
        except Exception as err:
            raise NodeError(f"{where} failed while predicting: {type(err).__name__}: {err}") from err
        if not isinstance(preds, Mapping):
            raise NodeError(f"{where}: predict() must return a dict of named outputs, got "
                            f"{type(preds).__name__}")
        for out, value in preds.items():
            check_finite(value, f"{where}, output {out!r}")
            if n is not None and _length(value) != n:
                raise NodeError(f"{where}: output {out!r} has {_length(value)} rows but the split has "
                                f"{n} samples (one row per sample)")
        return preds

    def _gather(self, wiring: Mapping[str, str], split: str, reader: str | None = None) -> dict[str, Any]:
        out = {}
        for arg, ref in wiring.items():
            up, output = parse_ref(ref)
            values = self.values(up, split)
            if output not in values:
                raise NodeError(f"{self.where(up, split)} produced no output {output!r} (it produced "
                                f"{sorted(values)}){f'; node {reader!r} reads it as {arg!r}' if reader else ''}")
            out[arg] = values[output]
        return out

    def _gather_checked(self, name: str, split: str, inputs: bool = True,
                        targets: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
        """A node's inputs and targets on ``split``; every one must hold the same number of samples."""
        spec = self.system.specs[name]
        got_in = self._gather(spec.inputs, split, name) if inputs else {}
        got_tg = self._gather(spec.targets, split, name) if targets else {}
        sizes = {}
        for field_name, wiring, values in (("input", spec.inputs, got_in), ("target", spec.targets, got_tg)):
            for arg, value in values.items():
                sizes[f"{field_name} {arg!r} ({wiring[arg]})"] = _length(value)
        if len(set(sizes.values())) > 1:
            listing = ", ".join(f"{k}: {v}" for k, v in sizes.items())
            raise NodeError(f"{self.where(name, split)}: its inputs and targets disagree in sample "
                            f"count ({listing}); their producers must give one row per sample of the split")
        return got_in, got_tg

    # -- results ------------------------------------------------------------------------------
    def values(self, name: str, split: str) -> dict[str, Any]:
        """The outputs of ``name`` on ``split`` (loaded from the store, a source, or computed)."""
        cached = self._values.get((name, split))
        if cached is not None:
            return cached
        spec = self.system.specs[name]
        node = spec.node
        if split not in predict_splits(self.system, name):
            raise NodeError(f"{self.where(name, split)}: the node predicts only on splits "
                            f"{list(predict_splits(self.system, name))} (its `splits`)")
        if node.is_source:
            vals = self._load(name, split)
        elif not stores_predictions(node):
            fitted = node.clone().fit({}, {}, seed=self.seed)
            vals = self._predict(fitted, name, split)
        else:
            self.ensure(name)
            vals = self.store.arrays(self.keys[name], f"pred/{split}")
        self._values[(name, split)] = vals
        return vals

    def _load(self, name: str, split: str) -> dict[str, Any]:
        """A source's outputs on ``split``, checked: finite (but for tables), equal sample counts."""
        node = self.system.specs[name].node
        where = self.where(name, split)
        try:
            vals = node.load(split, self.seed)
        except NodeError as err:
            raise NodeError(f"{where} failed while loading: {err}") from err
        except Exception as err:
            raise NodeError(f"{where} failed while loading: {type(err).__name__}: {err}") from err
        if not isinstance(vals, Mapping):
            raise NodeError(f"{where}: load() must return a dict of named outputs, got {type(vals).__name__}")
        for out, value in vals.items():
            if node.output_kinds.get(out) != "table":  # attribute tables may hold NaN = unknown
                check_finite(value, f"{where}, output {out!r}")
        lengths = {out: _length(v) for out, v in vals.items()}
        if len(set(lengths.values())) > 1:
            raise NodeError(f"{where}: its outputs disagree in sample count ({lengths}); every output "
                            "must hold one row per sample of the split")
        return dict(vals)

    def metrics(self, name: str, split: str | None = None) -> dict[str, float]:
        """Stored metrics of a model node on ``split`` (the system's eval split by default)."""
        self.ensure(name)
        meta = self.store.meta(self.keys[name])
        split = split or self.system.eval_split
        if split not in meta["metrics"]:
            raise NodeError(f"{self.where(name, split)}: no metrics on this split (the node is scored on "
                            f"{sorted(meta['metrics'])})")
        return meta["metrics"][split]

    def losses(self, name: str, split: str | None = None) -> np.ndarray:
        """Stored per-sample losses of a model node on ``split``."""
        self.ensure(name)
        return np.asarray(self.store.array(self.keys[name], f"loss/{split or self.system.eval_split}"))

    def fitted(self, name: str) -> BaseNode:
        """The fitted node, restored from the store without pickling."""
        if name not in self._fitted:
            self.ensure(name)
            node = self.system.specs[name].node.clone()
            if stores_predictions(node):
                node.load_state_dict(self.store.state(self.keys[name]))
            else:
                node.fit({}, {}, seed=self.seed)
            self._fitted[name] = node
        return self._fitted[name]

    def predict_with(self, overrides: Mapping[tuple[str, str], Any], split: str | None = None,
                     targets: Mapping[tuple[str, str], Any] | None = None) -> dict[str, dict[str, Any]]:
        """Re-run the *fitted* system on ``split`` with some outputs replaced; nothing is retrained.

        ``overrides`` maps ``(node, output)`` to a replacement value (e.g. corrupted source
        images); every node downstream of a replaced value predicts again with its fitted state.
        ``targets`` optionally replaces ground truth the same way (e.g. a subpopulation's labels).
        Returns, per recomputed node: ``predictions``, and where the node has targets, per-sample
        ``loss`` and ``metrics``. Used by stress tests and interventions.
        """
        split = split or self.system.eval_split
        overrides = dict(overrides)
        targets = dict(targets or {})
        for (node, output) in list(overrides) + list(targets):
            if node not in self.system.specs:
                raise KeyError(f"override names no node {node!r}")
        touched = {n for n, _ in overrides} | {n for n, _ in targets}
        affected: set[str] = set()
        for n in touched:
            affected |= self.system.descendants(n)
        local: dict[str, dict[str, Any]] = {}

        def value(name: str, out: str, kind: dict) -> Any:
            if (name, out) in kind:
                return kind[(name, out)]
            if name in local:
                return local[name]["predictions"][out]
            return self.values(name, split)[out]

        results: dict[str, dict[str, Any]] = {}
        for name in self.system.topological_order():
            if name not in affected or self.system.specs[name].node.is_source:
                continue
            spec = self.system.specs[name]
            inputs = {a: value(*parse_ref(r), overrides) for a, r in spec.inputs.items()}
            node = self.fitted(name)
            preds = self._predict(node, name, split, inputs=inputs, extra="with overrides")
            entry: dict[str, Any] = {"predictions": preds}
            if spec.targets:
                tg = {a: value(*parse_ref(r), {**overrides, **targets}) for a, r in spec.targets.items()}
                entry["loss"], entry["metrics"] = self._evaluate(node, name, split, preds, targets=tg)
            local[name] = entry
            results[name] = entry
        return results

    def release(self) -> None:
        """Drop values held in memory (the store keeps them)."""
        self._values.clear()


class LocalExecutor:
    """Runs every node in this process, seed by seed, in topological order."""

    threads = None

    def run(self, system: System, seeds: Iterable[int], store: Store) -> dict[int, Run]:
        from entangle.progress import progress

        runs = {}
        seeds = check_seeds(seeds)
        for seed in progress(seeds, desc=f"seeds{f' ({system.label})' if system.label else ''}",
                             unit="seed", leave=False):
            runs[seed] = Run(system, seed, store).run_all()
            # what the fits read (images, point clouds) is dropped once the seed is done: later
            # reads come back from the store (memory-mapped) or are recomputed, so memory does not
            # grow with the number of seeds and systems
            runs[seed].release()
        return runs


def stored_dependencies(system: System) -> dict[str, set[str]]:
    """For each stored node, the nearest stored nodes it reads (through sources and functions)."""
    deps: dict[str, set[str]] = {}
    for name in system.topological_order():
        found: set[str] = set()
        for up in system.graph.predecessors(name):
            if stores_predictions(system.specs[up].node):
                found.add(up)
            else:
                found |= deps.get(up, set())
        deps[name] = found
    return {n: d for n, d in deps.items() if stores_predictions(system.specs[n].node)}


def _fit_one(system: System, seed: int, name: str, store: tuple, threads: int) -> tuple[str, int, float]:
    """Worker: fit one (node, seed) whose stored inputs exist, publish it; returns timing.

    ``store`` is ``(store class, reopen_args)``, so a worker opens the same store (both tiers of a
    remote one) rather than pickling the parent's open handles.
    """
    import torch
    torch.set_num_threads(threads)
    start = time.perf_counter()
    cls, args = store
    Run(system, seed, cls(*args)).ensure(name)
    return name, seed, time.perf_counter() - start


class _PoolExecutor:
    """Shared scheduling: a (node, seed) task is submitted once its stored inputs are published."""

    def _submit(self, fn, *args):  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    def _wait_any(self, pending):  # pragma: no cover
        raise NotImplementedError

    def run(self, system: System, seeds: Iterable[int], store: Store) -> dict[int, Run]:
        seeds = check_seeds(seeds)
        deps = stored_dependencies(system)
        order = {name: i for i, name in enumerate(system.topological_order())}
        # one task per store key: a node with a fixed seed has one key for every study seed
        todo: dict[str, tuple[str, int, set[str]]] = {}
        for seed in seeds:
            keys = system.keys(seed)
            for name, ups in deps.items():
                key = keys[name]
                if key in todo:
                    store.record(key, hit=True)   # fitted once, by the task already scheduled
                    continue
                if store.has(key):
                    try:
                        store.check(key)
                    except CorruptEntryError as err:
                        log.warning("%s: %s; removing it and fitting again",
                                    Run.where_static(system, name, seed), err)
                        store.remove(key)
                    else:
                        store.record(key, hit=True)
                        continue
                store.record(key, hit=False)
                todo[key] = (name, seed, {keys[u] for u in ups})
        from entangle.progress import progress

        pending: dict[Any, str] = {}
        bar = progress(total=len(todo), desc=f"fits{f' ({system.label})' if system.label else ''}",
                       unit="fit", leave=False)
        while todo or pending:
            running = set(pending.values())
            ready = [k for k, (_, _, ups) in todo.items() if not any(u in todo or u in running for u in ups)]
            for key in sorted(ready, key=lambda k: (todo[k][1], order[todo[k][0]])):
                name, seed, _ = todo.pop(key)
                pending[self._submit(_fit_one, system, seed, name, (type(store), store.reopen_args()),
                                     self.threads)] = key
            if not pending:
                raise RuntimeError(f"scheduler stalled with tasks left: {sorted(v[:2] for v in todo.values())}")
            for fut in self._wait_any(list(pending)):
                pending.pop(fut)
                try:
                    self._result(fut)
                except Exception:
                    self._shutdown_pending(pending)
                    bar.close()
                    raise
                bar.update(1)
        bar.close()
        runs = {seed: Run(system, seed, store) for seed in seeds}
        for run in runs.values():
            run._ensured = set(deps)  # counted above, as hits or as the misses just computed
        return runs

    def _result(self, fut):
        return fut.result()

    def _shutdown_pending(self, pending) -> None:
        for fut in pending:
            fut.cancel()


def _exit_with_parent(parent: int, every: float = 1.0) -> None:
    """Pool worker initializer: the worker exits once the process that spawned it has gone.

    A main process killed by a signal runs no clean-up, and its workers would go on fitting
    queued nodes nobody waits for, holding the cores. Fits already published stay in the store.
    """
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, name="entangle-parent-watch", daemon=True).start()


class ProcessExecutor(_PoolExecutor):
    """Runs independent nodes and seeds in parallel in a pool of processes (spawned, so safe with torch).

    Results are bit-identical to :class:`LocalExecutor` when each worker uses the same number of
    torch threads as the local run (``threads``). One pool serves every :meth:`run` (a study's
    systems and a decomposition's derived ones: spawning workers costs seconds each time) until
    :meth:`close`, the end of a ``with`` block, or the executor is garbage-collected.
    """

    def __init__(self, workers: int | None = None, threads: int = 1):
        self.workers = workers or max(1, (os.cpu_count() or 1))
        self.threads = threads
        self._pool: ProcessPoolExecutor | None = None
        self._closer: weakref.finalize | None = None

    def run(self, system: System, seeds: Iterable[int], store: Store) -> dict[int, Run]:
        self._open()
        try:
            return super().run(system, seeds, store)
        except BaseException:
            self.close()   # the failed run's tasks finish (or are cancelled) before the error goes on
            raise

    def _open(self) -> ProcessPoolExecutor:
        """The pool, started on first use; its workers exit if this process is killed."""
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"),
                                             initializer=_exit_with_parent, initargs=(os.getpid(),))
            # a forgotten close() leaks no workers: the pool goes with the executor (or at exit)
            self._closer = weakref.finalize(self, self._pool.shutdown, wait=True, cancel_futures=True)
        return self._pool

    def close(self) -> None:
        """Shut the pool down, waiting for its workers; a later :meth:`run` opens a new one."""
        if self._closer is not None:
            self._closer()
        self._pool = self._closer = None

    def __enter__(self) -> "ProcessExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _submit(self, fn, *args):
        return self._pool.submit(fn, *args)

    def _wait_any(self, pending):
        from concurrent.futures import FIRST_COMPLETED, wait
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        return done


class RayExecutor(_PoolExecutor):
    """Runs nodes as Ray tasks on an existing cluster (``address``) or a local one.

    Ray retries a task whose worker died (``max_retries``); entries are published atomically, so a
    retried task never sees or leaves a half-written entry. Needs ``pip install 'entangle[ray]'``.
    """

    def __init__(self, address: str | None = None, num_cpus: int | None = None, threads: int = 1,
                 max_retries: int = 3):
        self.address = address
        self.num_cpus = num_cpus
        self.threads = threads
        self.max_retries = max_retries

    def _ray(self):
        try:
            import ray
        except ImportError as err:
            raise RuntimeError("executor=ray needs Ray: pip install 'entangle[ray]'") from err
        if not ray.is_initialized():
            # workers import node classes by module name; a local cluster's workers get this
            # process's import path, so nodes defined in the user's own folder (or a test
            # module) resolve there as they do here. A remote cluster needs them installed.
            env = None if self.address else {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}}
            try:
                ray.init(address=self.address, num_cpus=self.num_cpus, include_dashboard=False,
                         log_to_driver=False, runtime_env=env)
            except Exception as err:
                where = self.address or "a new local cluster"
                raise RuntimeError(f"could not connect Ray to {where}: {err}") from err
        return ray

    def run(self, system: System, seeds: Iterable[int], store: Store) -> dict[int, Run]:
        ray = self._ray()
        self._remote = ray.remote(max_retries=self.max_retries)(_fit_one)
        self._ray_mod = ray
        return super().run(system, seeds, store)

    def _submit(self, fn, *args):
        return self._remote.remote(*args)

    def _wait_any(self, pending):
        done, _ = self._ray_mod.wait(pending, num_returns=1)
        return done

    def _result(self, fut):
        return self._ray_mod.get(fut)

    def _shutdown_pending(self, pending) -> None:
        for ref in pending:
            self._ray_mod.cancel(ref)
