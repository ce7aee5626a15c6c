"""The study: what an experiment is about, built in one place, fitted through one executor and store.

A :class:`Study` holds the systems under study (``old``; ``new``, the old one with one node
changed; reference systems with that node replaced, e.g. an oracle), the seeds, the store and the
executor. Every analysis is a function ``analysis(study, **options) -> dict``: it asks the study
for fitted runs (:meth:`Study.runs`) or fits a system derived from the study's
(:meth:`Study.fit`, e.g. a decomposition's), so everything goes through the same executor and
store, and nothing the store holds is fitted twice.

Hydra composes the study's config (``pipeline``, ``change``, ``references``, ``seeds``,
``store``, ``executor``; a profile patches them), and :meth:`Study.from_config` builds it:

    config  ->  Study.from_config(cfg)  ->  analysis(study, **options) ...  ->  report

>>> from sklearn.linear_model import Ridge
>>> from entangle.data.toys import GaussianSource
>>> from entangle.node import SklearnNode
>>> from entangle.store import Store
>>> from entangle.system import NodeSpec, System
>>> import tempfile
>>> old = System({"data": GaussianSource(weights={"y": [1.0, 2.0]}),
...               "m": NodeSpec(SklearnNode(estimator=Ridge(alpha=100.0)), inputs={"x": "data.x"},
...                             targets={"y": "data.y"}, output=True)})
>>> study = Study(old, new=old.replace("m", SklearnNode(estimator=Ridge(alpha=0.1))),
...               seeds=[0, 1], store=Store(tempfile.mkdtemp()))
>>> study.changed, sorted(study.runs("new"))
('m', [0, 1])
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping, Sequence

from entangle.executor import LocalExecutor, Run, check_seeds
from entangle.store import Store
from entangle.system import NodeSpec, System, WIRING_KEYS

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A config value is wrong; the message names the key (and file where known)."""


#: the study's own configuration problems are configuration errors
StudyError = ConfigError


def infer_changed(old: System, new: System) -> list[str]:
    """Nodes whose own spec differs between the systems (not merely their inputs' keys)."""
    changed = []
    k_old, k_new = old.keys(0), new.keys(0)
    for name in old.topological_order():
        if name not in new.specs or k_old[name] == k_new[name]:
            continue
        if all(k_old[u] == k_new[u] for u in old.graph.predecessors(name)):
            changed.append(name)
    return changed


class Study:
    """The systems of an experiment, its seeds, store and executor; fitted runs on demand.

    Parameters
    ----------
    old : the system as it is.
    new : the system with one node changed (None for an experiment on one system).
    changed : the changed node, or several (inferred from the two systems when None).
    references : name -> a system with the changed node replaced (oracle, classical baseline);
        every node downstream of it retrained.
    seeds : distinct non-negative ints.
    store, executor : where fits go and what runs them (:class:`~entangle.executor.LocalExecutor`
        by default).
    profile : the profile the study was composed with (reported, not interpreted).
    """

    def __init__(self, old: System, *, seeds: Sequence[int], store: Store, new: System | None = None,
                 changed: str | Sequence[str] | None = None, references: Mapping[str, System] | None = None,
                 executor: Any = None, profile: str = "default"):
        self.seeds = check_seeds(seeds)
        self.store = store
        self.executor = executor or LocalExecutor()
        self.profile = str(profile)
        self.systems: dict[str, System] = {"old": old.labelled(old.label or "old system")}
        names: list[str] = []
        if new is not None:
            self.systems["new"] = new.labelled(new.label or "new system")
            names = infer_changed(old, new) if changed is None else (
                [changed] if isinstance(changed, str) else list(changed))
            if not names:
                raise StudyError("the old and new systems do not differ: nothing changed")
            for name in names:
                if name not in old.specs or name not in new.specs:
                    raise StudyError(f"changed node {name!r} is not in both systems")
        #: the changed nodes; ``changed`` names them in reports (one name, or "a+b")
        self.changed_nodes = names
        self.changed = names[0] if len(names) == 1 else ("+".join(names) if names else None)
        for name, system in (references or {}).items():
            if name in ("old", "new"):
                raise StudyError(f"a reference may not be called {name!r}")
            self.systems[name] = system.labelled(system.label or f"reference {name}")
        self._runs: dict[tuple[str, tuple[int, ...]], dict[int, Run]] = {}

    # -- the systems ------------------------------------------------------------------------------
    @property
    def old(self) -> System:
        return self.systems["old"]

    @property
    def new(self) -> System:
        if "new" not in self.systems:
            raise StudyError("this study has no new system (no `change` was configured)")
        return self.systems["new"]

    @property
    def references(self) -> dict[str, System]:
        return {k: v for k, v in self.systems.items() if k not in ("old", "new")}

    def __repr__(self) -> str:
        return (f"Study(systems={list(self.systems)}, changed={self.changed!r}, seeds={self.seeds}, "
                f"store={self.store!r}, executor={type(self.executor).__name__})")

    # -- fitting -------------------------------------------------------------------------------------
    def runs(self, which: str = "old", seeds: Iterable[int] | None = None) -> dict[int, Run]:
        """Fitted runs of system ``which`` (``old``, ``new`` or a reference) over ``seeds``
        (default: the study's); what the store lacks is fitted through the executor."""
        if which not in self.systems:
            raise StudyError(f"no system {which!r} in this study (it has {sorted(self.systems)})")
        return self.fit(self.systems[which], seeds)

    @property
    def old_runs(self) -> dict[int, Run]:
        return self.runs("old")

    @property
    def new_runs(self) -> dict[int, Run]:
        return self.runs("new")

    def fit(self, system: System, seeds: Iterable[int] | None = None, label: str | None = None
            ) -> dict[int, Run]:
        """Fit any system (one of the study's, or derived from one: a decomposition's reference
        system, an intervention) over ``seeds`` through the study's executor and store."""
        seeds = self.seeds if seeds is None else check_seeds(seeds)
        if label is not None:
            system = system.labelled(label)
        cache_key = (repr(sorted(system.keys(seeds[0]).items())) + (system.label or ""), tuple(seeds))
        if cache_key not in self._runs:
            self._runs[cache_key] = self.executor.run(system, seeds, self.store)
        return self._runs[cache_key]

    def close(self) -> None:
        """Release the executor's workers (a process pool lives until then, serving every fit)."""
        close = getattr(self.executor, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "Study":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- building from a config ----------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: Any, *, store: Store | None = None, executor: Any = None,
                    where: str | None = None) -> "Study":
        """Build the study from a composed config: ``pipeline``, ``change`` (``node`` and ``set``
        or ``replace``), ``references``, ``seeds``, ``store``, ``executor``, ``profile``."""
        from omegaconf import OmegaConf

        pipeline = cfg.get("pipeline")
        if not pipeline or not pipeline.get("nodes"):
            raise StudyError("no pipeline: choose one with pipeline=NAME")
        where = where or pipeline_where(cfg)
        change = cfg.get("change")
        improving = change is not None and change.get("node") is not None
        seeds = seeds_from_config(cfg, minimum=2 if improving else 1, reason="an improvement is "
                                  "judged by its interval over seeds; one seed gives none")
        old = System.from_config(pipeline, where=where)
        new, changed = None, None
        if improving:
            changed = str(change.node)
            new = changed_system(old, pipeline, change, where)
        references = {}
        refs = cfg.get("references")
        refs = OmegaConf.to_container(refs, resolve=True) if refs is not None else {}
        for name, node_cfg in refs.items():
            if changed is None:
                raise StudyError(f"references.{name}: references replace the changed node; set change.node")
            references[name] = replaced_system(old, changed, node_cfg, f"references.{name}")
        check_analyses(cfg, old, where)
        return cls(old, new=new, changed=changed, references=references, seeds=seeds,
                   store=store or store_from_config(cfg), executor=executor or executor_from_config(cfg),
                   profile=str(cfg.get("profile", "default")))


#: config blocks whose keys name nodes of the pipeline (an analysis would skip a misspelt one)
NODE_KEYED_BLOCKS = ("decomposition", "outcomes.detection", "outcomes.primary", "flips.outcomes",
                     "flips.old", "analysis.outcomes")


def check_analyses(cfg: Any, system: System, where: str = "pipeline config") -> None:
    """The analysis blocks of ``cfg`` checked against ``system`` before anything is fitted: each
    node they name is one of its nodes, and the ``decomposition`` block (unless ``decompose:
    false``) has only known fields, splits of the system and oracles its nodes read."""
    from omegaconf import DictConfig, OmegaConf

    from entangle.decompose import check_decomposition
    for dotted in NODE_KEYED_BLOCKS:
        block = OmegaConf.select(cfg, dotted) if isinstance(cfg, DictConfig) else None
        for name in block if isinstance(block, DictConfig) else ():
            if name not in system.specs:
                raise ConfigError(f"{dotted}.{name}: {where} has no node {name!r} "
                                  f"(nodes: {sorted(system.specs)})")
    if cfg.get("decomposition") and cfg.get("decompose", True):
        check_decomposition(system, cfg.decomposition)


def seeds_from_config(cfg: Any, minimum: int = 1, reason: str = "") -> list[int]:
    """``cfg.seeds``: distinct non-negative ints, at least ``minimum`` of them (ConfigError,
    saying ``reason`` where given)."""
    raw = cfg.get("seeds")
    if raw is not None and not isinstance(raw, (str, int, float)):
        raw = list(raw)
    try:
        out = check_seeds(raw)
    except ValueError as err:
        raise ConfigError(f"seeds: {err}") from None
    if len(out) < minimum:
        raise ConfigError(f"seeds: this experiment needs at least {minimum} seeds"
                          f"{f' ({reason})' if reason else ''}, e.g. seeds={list(range(minimum))}; got {out}")
    return out


def store_from_config(cfg: Any) -> Store:
    """The artifact store named by ``store.root`` (an empty root is refused: StoreError); with
    ``store.remote`` (an fsspec URL), a :class:`~entangle.remote_store.RemoteStore` whose local
    cache is ``store.root``. The absolute folder is logged: every run says where it stores."""
    conf = cfg.get("store")
    root = conf.get("root") if conf is not None else None
    remote = conf.get("remote") if conf is not None else None
    if remote not in (None, "", "null"):
        from entangle.remote_store import RemoteStore
        store = RemoteStore(root, str(remote))
        log.info("store: %s (shared through %s)", store.root, store.remote)
        return store
    store = Store(root)
    log.info("store: %s", store.root)
    return store


def executor_from_config(cfg: Any) -> Any:
    """The executor of the ``executor`` config group (local when absent)."""
    from hydra.utils import instantiate
    ex = cfg.get("executor")
    return LocalExecutor() if ex is None else instantiate(ex)


def pipeline_where(cfg: Any) -> str:
    """Where the pipeline config came from, for error messages (``pipeline/NAME.yaml``)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        choice = HydraConfig.get().runtime.choices.get("pipeline")
    except Exception:  # not under a Hydra run
        choice = cfg.get("pipeline_name")
    return f"pipeline/{choice}.yaml" if choice and choice != "none" else "pipeline config"


def changed_system(old: System, pipeline: Any, change: Any, where: str) -> System:
    """``old`` with ``change.node`` changed: ``change.set`` merged onto its config, or
    ``change.replace`` (a whole node config; the wiring is kept unless given)."""
    from omegaconf import OmegaConf
    name = str(change.node)
    if name not in old.specs:
        raise StudyError(f"change.node={name!r} is not a node of {where} (nodes: {sorted(old.specs)})")
    node_cfg = OmegaConf.to_container(pipeline.nodes[name], resolve=True)
    if change.get("replace") is not None:
        new_cfg = OmegaConf.to_container(change.replace, resolve=True)
        for k in WIRING_KEYS:
            if k in node_cfg and k not in new_cfg:
                new_cfg[k] = node_cfg[k]
    elif change.get("set") is not None:
        new_cfg = OmegaConf.to_container(OmegaConf.merge(node_cfg, change.set), resolve=True)
    else:
        raise StudyError("change needs `set` (fields to change) or `replace` (a node config)")
    pipe = OmegaConf.to_container(pipeline, resolve=True)
    pipe["nodes"][name] = new_cfg
    return System.from_config(pipe, where=f"{where} with change.node={name}")


def patched_system(pipeline: Any, patch: Mapping[str, Any], where: str) -> System:
    """The pipeline with ``patch`` (node name -> fields merged onto its config) applied."""
    from omegaconf import OmegaConf
    pipe = OmegaConf.to_container(pipeline, resolve=True)
    for name, fields in dict(patch).items():
        if name not in pipe["nodes"]:
            raise ConfigError(f"{where}: names no node {name!r} (nodes: {sorted(pipe['nodes'])})")
        pipe["nodes"][name] = OmegaConf.to_container(OmegaConf.merge(pipe["nodes"][name], fields), resolve=True)
    return System.from_config(pipe, where=where)


def replaced_system(system: System, node: str, node_cfg: Mapping[str, Any], where: str) -> System:
    """``system`` with ``node`` replaced by a node built from a ``_target_`` config (its wiring
    kept unless the config gives its own)."""
    from hydra.utils import instantiate
    cfg = dict(node_cfg)
    wiring = {k: cfg.pop(k) for k in WIRING_KEYS if k in cfg}
    spec = system.specs[node]
    try:
        built = instantiate(cfg, _convert_="all")
    except Exception as err:
        raise StudyError(f"{where}: cannot build the node: {type(err).__name__}: {err}") from err
    # a replacement that cannot start from another node's state (an oracle, a classical
    # algorithm) does not inherit the replaced node's `init`
    init = wiring.get("init", spec.init if callable(getattr(built, "init_from", None)) else None)
    # ... nor the targets it does not take (the labels a refiner weighs its loss by are not an
    # oracle's): a target the replaced node's config wired is kept only where the new one reads it
    declared = getattr(built, "target_kinds", None) or {}
    targets = wiring.get("targets", {k: v for k, v in spec.targets.items() if not declared or k in declared})
    specs = dict(system.specs)
    specs[node] = NodeSpec(built, inputs=dict(wiring.get("inputs", spec.inputs)),
                           targets=dict(targets),
                           output=bool(wiring.get("output", spec.output)),
                           fit_split=str(wiring.get("fit_split", spec.fit_split)),
                           init=init, seed=wiring.get("seed", spec.seed),
                           splits=wiring.get("splits", spec.splits))
    # ... and the node it started from goes too when nothing else reads it (a pretraining that
    # only the replaced node fine-tuned from would be fitted for nothing)
    if spec.init and init != spec.init and not _read_elsewhere(specs, spec.init):
        del specs[spec.init]
    return System(specs, splits=system.splits, eval_split=system.eval_split, where=system.where,
                  label=system.label)


def _read_elsewhere(specs: Mapping[str, NodeSpec], name: str) -> bool:
    """Whether any node reads ``name``'s outputs or starts from it, or it is a system output."""
    if specs[name].output:
        return True
    for other, s in specs.items():
        refs = [*s.inputs.values(), *s.targets.values()]
        if other != name and (s.init == name or any(str(r).split(".")[0] == name for r in refs)):
            return True
    return False
