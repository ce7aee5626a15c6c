"""A system of models: a networkx DiGraph of named nodes wired by ``node.output`` references.

Data sources and models are nodes; each node's ``inputs`` and ``targets`` name upstream outputs
as ``"other_node.output"`` strings, and the edges come from those references. The system is
validated when it is built (every problem collected and reported together), and knows each
node's cache key for a seed without running anything, so an executor can skip what the store has.

>>> from entangle.node import FunctionNode
>>> from entangle.data.toys import GaussianSource
>>> sys_ = System({"data": GaussianSource(variances=[1.0, 1.0]),
...                "double": NodeSpec(FunctionNode(fn=lambda x: 2 * x), inputs={"x": "data.x"},
...                                   output=True)})
>>> sys_.topological_order()
['data', 'double']
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace as dc_replace
from typing import Any, Iterable, Mapping

import networkx as nx

from entangle.hashing import code_version, fingerprint, key_of, qualname, UnhashableError
from entangle.node import ANY, BaseNode, FunctionNode

log = logging.getLogger(__name__)

#: keys of a node's config that describe wiring, not the node itself.
WIRING_KEYS = ("inputs", "targets", "output", "fit_split", "init", "seed", "splits")


class SystemError_(ValueError):
    """The system is malformed; ``problems`` lists every problem, each naming node and field."""

    def __init__(self, problems: list[str], where: str | None = None):
        self.problems = list(problems)
        self.where = where
        head = f"invalid system{f' in {where}' if where else ''}: {len(problems)} problem(s)"
        super().__init__(head + "\n" + "\n".join(f"  - {p}" for p in problems))


#: public name (``SystemError`` would shadow a builtin).
InvalidSystemError = SystemError_


@dataclass(frozen=True)
class NodeSpec:
    """One node of a system and its wiring.

    Parameters
    ----------
    node : the node object (a :class:`~entangle.node.BaseNode`).
    inputs : input name -> ``"upstream.output"``.
    targets : target name -> ``"upstream.output"`` (ground truth for fit, loss and metrics).
    output : whether the node is a system output (kept even if nothing reads it).
    fit_split : the split the node is fitted on.
    init : another node whose *fitted* state this node starts from (fine-tuning a pretrained
        model): the executor calls ``node.init_from(fitted_other)`` before ``fit``.
    seed : a fixed seed for this node whatever the study's seed, so one fit (a pretraining, a
        shared teacher) serves every seed of a study; None follows the study's seed.
    splits : the splits the node predicts on (and is scored on) after fitting; None: every split
        of the system. Only for a node no other node reads (a pretraining that others start
        from with ``init``, evaluated on its own test split): predicting elsewhere is wasted work.
    """

    node: BaseNode
    inputs: Mapping[str, str] = field(default_factory=dict)
    targets: Mapping[str, str] = field(default_factory=dict)
    output: bool = False
    fit_split: str = "train"
    init: str | None = None
    seed: int | None = None
    splits: tuple[str, ...] | None = None


def parse_ref(ref: str) -> tuple[str, str]:
    """Split ``"node.output"`` into its two parts; raise ``ValueError`` otherwise."""
    if not isinstance(ref, str) or ref.count(".") < 1:
        raise ValueError(f"reference {ref!r} is not of the form 'node.output'")
    node, output = ref.split(".", 1)
    if not node or not output:
        raise ValueError(f"reference {ref!r} is not of the form 'node.output'")
    return node, output


def stores_predictions(node: BaseNode) -> bool:
    """Whether a node's outputs go to the store (cheap plain functions are recomputed instead)."""
    return not node.is_source and getattr(node, "stores_predictions", not isinstance(node, FunctionNode))


def uses_seed(node: BaseNode) -> bool:
    """Whether the node's results depend on the study seed (plain functions do not)."""
    return getattr(node, "uses_seed", not isinstance(node, FunctionNode))


def predict_splits(system: "System", name: str) -> tuple[str, ...]:
    """The splits node ``name`` predicts on: its own ``splits``, else every split of the system."""
    spec = system.specs[name]
    return tuple(spec.splits) if spec.splits is not None else tuple(system.splits)


def node_seed(spec: NodeSpec, seed: int) -> int | None:
    """The seed a node runs with in a study at ``seed``: its fixed seed, the study's, or None
    when its results do not depend on a seed."""
    if spec.seed is not None:
        return int(spec.seed)
    return int(seed) if uses_seed(spec.node) else None


class System:
    """A validated DAG of nodes; immutable — ``replace`` returns a new system."""

    def __init__(self, nodes: Mapping[str, NodeSpec | BaseNode] | Iterable[tuple[str, NodeSpec | BaseNode]],
                 *, splits: Iterable[str] = ("train", "test"), eval_split: str = "test",
                 where: str | None = None, label: str | None = None):
        items = list(nodes.items()) if isinstance(nodes, Mapping) else list(nodes)
        problems: list[str] = []
        specs: dict[str, NodeSpec] = {}
        for name, spec in items:
            if name in specs:
                problems.append(f"node {name!r}: duplicate name")
                continue
            specs[name] = spec if isinstance(spec, NodeSpec) else NodeSpec(node=spec)
        self.specs: dict[str, NodeSpec] = specs
        self.splits = tuple(splits)
        self.eval_split = eval_split
        self.where = where
        #: what this system is in a study ("old system", "new system", "reference oracle"):
        #: named in log lines and errors; not part of any cache key.
        self.label = label
        if eval_split not in self.splits:
            problems.append(f"eval_split {eval_split!r} is not one of splits {list(self.splits)}")
        self.graph = nx.DiGraph()
        problems += self._build_graph()
        if problems:
            raise SystemError_(problems, where)

    # -- construction and validation --------------------------------------------------------
    def _build_graph(self) -> list[str]:
        problems: list[str] = []
        g = self.graph
        for name, spec in self.specs.items():
            g.add_node(name)
            if not isinstance(spec.node, BaseNode):
                problems.append(f"node {name!r}: {type(spec.node).__name__} does not implement the node "
                                "protocol (subclass entangle.node.BaseNode or wrap it in an adapter)")
                continue
            if "." in name or "/" in name or not name:
                problems.append(f"node {name!r}: names may not be empty or contain '.' or '/'")
            if spec.node.is_source and (spec.inputs or spec.targets):
                problems.append(f"node {name!r}: a source takes no inputs or targets")
            if not spec.node.is_source and spec.fit_split not in self.splits:
                problems.append(f"node {name!r}, field 'fit_split': {spec.fit_split!r} is not one of "
                                f"{list(self.splits)}")
        for name, spec in self.specs.items():
            if not isinstance(spec.node, BaseNode):
                continue
            for field_name, wiring, declared in (("inputs", spec.inputs, spec.node.input_kinds),
                                                 ("targets", spec.targets, spec.node.target_kinds)):
                for arg, ref in wiring.items():
                    where = f"node {name!r}, field '{field_name}.{arg}'"
                    try:
                        up, out = parse_ref(ref)
                    except ValueError as err:
                        problems.append(f"{where}: {err}")
                        continue
                    if up not in self.specs:
                        hint = _closest(up, self.specs)
                        problems.append(f"{where}: reference {ref!r} names no node {up!r}{hint}")
                        continue
                    up_node = self.specs[up].node
                    if not isinstance(up_node, BaseNode):
                        continue
                    up_kinds = up_node.output_kinds
                    if out not in up_kinds:
                        problems.append(f"{where}: node {up!r} has no output {out!r} "
                                        f"(it has {sorted(up_kinds)})")
                        continue
                    if declared and arg not in declared:
                        problems.append(f"{where}: {type(spec.node).__name__} has no {field_name[:-1]} "
                                        f"{arg!r} (it takes {sorted(declared)})")
                        continue
                    want = declared.get(arg, ANY) if declared else ANY
                    have = up_kinds[out]
                    if ANY not in (want, have) and want != have:
                        problems.append(f"{where}: {ref!r} is of kind {have!r} but input {arg!r} "
                                        f"expects kind {want!r}")
                    g.add_edge(up, name)
                    g.edges[up, name].setdefault("refs", []).append((field_name, arg, out))
                missing = set(declared) - set(wiring)
                optional = set(getattr(spec.node, f"optional_{field_name}", ()))
                for arg in sorted(missing - optional):
                    if field_name == "targets" and not wiring and not declared:
                        continue
                    problems.append(f"node {name!r}, field '{field_name}.{arg}': required "
                                    f"{field_name[:-1]} is not wired")
        read = {u for u, v in g.edges if any(f != "init" for f, _, _ in g.edges[u, v].get("refs", []))}
        for name, spec in self.specs.items():
            if spec.splits is not None:
                unknown = [x for x in spec.splits if x not in self.splits]
                if unknown or not spec.splits:
                    problems.append(f"node {name!r}, field 'splits': {list(spec.splits)} must be a non-empty "
                                    f"subset of the system's splits {list(self.splits)}")
                if name in read:
                    problems.append(f"node {name!r}, field 'splits': other nodes read its outputs, so it "
                                    "must predict on every split (splits: null)")
        for name, spec in self.specs.items():
            if spec.seed is not None and (isinstance(spec.seed, bool) or not isinstance(spec.seed, int)
                                          or spec.seed < 0):
                problems.append(f"node {name!r}, field 'seed': a fixed seed must be an int >= 0, "
                                f"got {spec.seed!r}")
            if spec.init is None:
                continue
            where = f"node {name!r}, field 'init'"
            if spec.init not in self.specs:
                problems.append(f"{where}: names no node {spec.init!r}{_closest(str(spec.init), self.specs)}")
            elif self.specs[spec.init].node.is_source or not stores_predictions(self.specs[spec.init].node):
                problems.append(f"{where}: {spec.init!r} is not a fitted model (a source or a plain "
                                "function has no state to start from)")
            elif not callable(getattr(spec.node, "init_from", None)):
                problems.append(f"{where}: {type(spec.node).__name__} cannot start from another node's "
                                "state (it has no init_from method)")
            else:
                g.add_edge(spec.init, name)
                g.edges[spec.init, name].setdefault("refs", []).append(("init", "init", "state"))
        if not nx.is_directed_acyclic_graph(g):
            cycle = nx.find_cycle(g)
            path = " -> ".join([u for u, _ in cycle] + [cycle[0][0]])
            problems.append(f"cycle: {path}")
        for name, spec in self.specs.items():
            if g.out_degree(name) == 0 and not spec.output:
                problems.append(f"node {name!r}: its outputs are read by no node and it is not "
                                "marked as a system output (set output: true)")
        return problems

    @classmethod
    def from_config(cls, cfg: Any, where: str | None = None) -> "System":
        """Build from a config with ``nodes`` (name -> ``_target_`` config plus wiring keys).

        Every node that cannot be instantiated is reported together with the others, naming the
        node and the offending field; nothing is instantiated twice.
        """
        from hydra.errors import InstantiationException
        from hydra.utils import instantiate
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
        if not isinstance(cfg, Mapping) or "nodes" not in cfg:
            raise SystemError_(["the pipeline config has no 'nodes' mapping"], where)
        problems: list[str] = []
        specs: dict[str, NodeSpec] = {}
        for name, node_cfg in (cfg["nodes"] or {}).items():
            if not isinstance(node_cfg, Mapping):
                problems.append(f"node {name!r}: expected a mapping with '_target_', got {node_cfg!r}")
                continue
            node_cfg = dict(node_cfg)
            wiring = {k: node_cfg.pop(k) for k in WIRING_KEYS if k in node_cfg}
            for k in ("inputs", "targets"):
                for arg, ref in (wiring.get(k) or {}).items() if isinstance(wiring.get(k), Mapping) else ():
                    up = str(ref).split(".", 1)[0]
                    if up not in cfg["nodes"]:
                        problems.append(f"node {name!r}, field '{k}.{arg}': reference {ref!r} names no "
                                        f"node {up!r}{_closest(up, cfg['nodes'])}")
            if "_target_" not in node_cfg:
                problems.append(f"node {name!r}, field '_target_': missing (which class is this node?)")
                continue
            try:
                node = instantiate(node_cfg, _convert_="all")
            except InstantiationException as err:
                problems.append(f"node {name!r}, field '_target_' ({node_cfg['_target_']}): "
                                f"{_first_line(err)}")
                continue
            except Exception as err:  # a node's own __init__ validation
                problems.append(f"node {name!r}: {type(err).__name__}: {_first_line(err)}")
                continue
            for k in ("inputs", "targets"):
                if k in wiring and not isinstance(wiring[k], Mapping):
                    problems.append(f"node {name!r}, field '{k}': expected a mapping of "
                                    f"name: node.output, got {wiring[k]!r}")
                    wiring[k] = {}
            specs[name] = NodeSpec(node=node, inputs=dict(wiring.get("inputs") or {}),
                                   targets=dict(wiring.get("targets") or {}),
                                   output=bool(wiring.get("output", False)),
                                   fit_split=str(wiring.get("fit_split", "train")),
                                   init=None if wiring.get("init") is None else str(wiring["init"]),
                                   seed=wiring.get("seed"),
                                   splits=None if wiring.get("splits") is None else tuple(wiring["splits"]))
        unknown = set(cfg) - {"nodes", "splits", "eval_split", "name", "defaults"}
        for k in sorted(unknown):
            problems.append(f"pipeline field {k!r} is not known (expected nodes, splits, eval_split)")
        if problems:
            raise SystemError_(sorted(set(problems), key=problems.index), where)
        return cls(specs, splits=cfg.get("splits", ("train", "test")),
                   eval_split=cfg.get("eval_split", "test"), where=where)

    # -- graph queries (free-function style over the networkx graph) ------------------------
    def __contains__(self, name: str) -> bool:
        return name in self.specs

    def __getitem__(self, name: str) -> BaseNode:
        return self.specs[name].node

    def __iter__(self):
        return iter(self.topological_order())

    def __repr__(self) -> str:
        return f"System({self.topological_order()})"

    def topological_order(self) -> list[str]:
        """Node names, every node after its inputs (ties broken by name, so it is deterministic)."""
        return list(nx.lexicographical_topological_sort(self.graph))

    def descendants(self, name: str) -> set[str]:
        """Nodes a change of ``name`` forces to recompute."""
        self._check_name(name)
        return set(nx.descendants(self.graph, name))

    def ancestors(self, name: str) -> set[str]:
        self._check_name(name)
        return set(nx.ancestors(self.graph, name))

    def sources(self) -> list[str]:
        return [n for n in self.topological_order() if self.specs[n].node.is_source]

    def models(self) -> list[str]:
        """Nodes with a metric: non-sources that have targets wired."""
        return [n for n in self.topological_order()
                if not self.specs[n].node.is_source and self.specs[n].targets]

    def _check_name(self, name: str) -> None:
        if name not in self.specs:
            raise KeyError(f"no node {name!r} in the system (nodes: {sorted(self.specs)})")

    def replace(self, name: str, node: BaseNode | NodeSpec) -> "System":
        """A new system with ``name`` replaced; the wiring is kept unless a NodeSpec is given."""
        self._check_name(name)
        specs = dict(self.specs)
        specs[name] = node if isinstance(node, NodeSpec) else dc_replace(specs[name], node=node)
        return System(specs, splits=self.splits, eval_split=self.eval_split, where=self.where,
                      label=self.label)

    def with_spec(self, name: str, **changes: Any) -> "System":
        """A new system with fields of ``name``'s NodeSpec changed (e.g. ``fit_split``)."""
        self._check_name(name)
        specs = dict(self.specs)
        specs[name] = dc_replace(specs[name], **changes)
        return System(specs, splits=self.splits, eval_split=self.eval_split, where=self.where,
                      label=self.label)

    def labelled(self, label: str | None) -> "System":
        """The same system under another label (log lines and errors name it; keys do not)."""
        return System(self.specs, splits=self.splits, eval_split=self.eval_split, where=self.where,
                      label=label)

    # -- cache keys ---------------------------------------------------------------------------
    def keys(self, seed: int) -> dict[str, str]:
        """Every node's cache key for ``seed``: class, code version, params, upstream keys, seed."""
        keys: dict[str, str] = {}
        for name in self.topological_order():
            spec = self.specs[name]
            node = spec.node
            skip = set(getattr(node, "execution_params", ()))
            try:
                params = fingerprint({k: v for k, v in node.get_params().items() if k not in skip})
            except UnhashableError as err:
                raise SystemError_([f"node {name!r}: {err}"], self.where) from err
            payload: dict[str, Any] = {
                "class": qualname(type(node)),
                "code": code_version(type(node)),
                "params": params,
                "seed": node_seed(spec, seed),
            }
            if hasattr(node, "data_fingerprint"):  # sources reading files: follow their content
                payload["data"] = fingerprint(node.data_fingerprint())
            if spec.init is not None:
                payload["init"] = keys[spec.init]
            if not node.is_source:
                payload["inputs"] = {arg: [keys[parse_ref(r)[0]], parse_ref(r)[1]]
                                     for arg, r in sorted(spec.inputs.items())}
                payload["targets"] = {arg: [keys[parse_ref(r)[0]], parse_ref(r)[1]]
                                      for arg, r in sorted(spec.targets.items())}
                payload["fit_split"] = spec.fit_split
                payload["splits"] = list(predict_splits(self, name))
            keys[name] = key_of(payload)
        return keys


def _first_line(err: BaseException) -> str:
    """The error's message on one line, without Hydra's hint about HYDRA_FULL_ERROR."""
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    text = re.sub(r",? ?set env var HYDRA_FULL_ERROR=1 to see chained (exception|stack trace)\.?", "", text)
    return text or type(err).__name__


def _closest(name: str, options: Iterable[str]) -> str:
    import difflib
    match = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""
