"""System construction, validation errors, topological execution and retrain propagation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression, Ridge

from entangle.data.toys import GaussianSource
from entangle.executor import LocalExecutor, Run
from entangle.node import BaseNode, FunctionNode, SklearnNode
from entangle.system import InvalidSystemError, NodeSpec, System


def chain(alpha: float = 1.0) -> dict:
    """data -> up (ridge on x predicting t) -> down (linear on up.pred predicting y)."""
    return {
        "data": GaussianSource(variances=[4.0, 1.0], weights={"t": [1.0, 2.0], "y": [1.0, 0.0]},
                               noise={"t": 0.5, "y": 0.1}, sizes={"train": 200, "test": 300}),
        "up": NodeSpec(SklearnNode(estimator=Ridge(alpha=alpha)), inputs={"x": "data.x"},
                       targets={"y": "data.t"}),
        "down": NodeSpec(SklearnNode(estimator=LinearRegression()), inputs={"s": "up.pred"},
                         targets={"y": "data.y"}, output=True),
    }


def scaled(s, factor):
    return np.asarray(s) * factor


class Recorder(BaseNode):
    """Records the order in which nodes are fitted; output = input + offset."""

    input_kinds = {"x": "array"}
    target_kinds = {}
    output_kinds = {"pred": "array"}
    log: list[str] = []

    def __init__(self, *, label: str, offset: float = 1.0):
        self.label = label
        self.offset = offset

    def fit(self, inputs, targets, *, seed):
        Recorder.log.append(self.label)
        self.fitted_ = True
        return self

    def predict(self, inputs):
        return {"pred": np.asarray(inputs["x"], dtype=float).reshape(len(inputs["x"]), -1)[:, 0] + self.offset}

    def loss(self, predictions, targets):
        return np.zeros(len(predictions["pred"]))


def test_topological_order_and_descendants():
    system = System(chain())
    assert system.topological_order() == ["data", "up", "down"]
    assert system.descendants("up") == {"down"}
    assert system.descendants("data") == {"up", "down"}
    assert system.models() == ["up", "down"]
    with pytest.raises(KeyError, match="no node 'nope'"):
        system.descendants("nope")


def test_validation_collects_every_problem_naming_node_and_field():
    specs = chain()
    specs["down"] = NodeSpec(SklearnNode(estimator=LinearRegression()),
                             inputs={"s": "upp.pred", "z": "up.nothing"}, targets={"y": "data.y"},
                             output=True)
    specs["orphan"] = NodeSpec(SklearnNode(estimator=LinearRegression()), inputs={"x": "data.x"},
                               targets={"y": "data.y"})
    with pytest.raises(InvalidSystemError) as info:
        System(specs)
    problems = info.value.problems
    text = "\n".join(problems)
    assert "node 'down', field 'inputs.s': reference 'upp.pred' names no node 'upp' (did you mean 'up'?)" in text
    assert "node 'down', field 'inputs.z': node 'up' has no output 'nothing'" in text
    assert "node 'orphan': its outputs are read by no node" in text
    assert len(problems) == 4  # the three above, and 'up' now read by nobody


def test_cycle_is_rejected_when_built():
    specs = {
        "a": NodeSpec(Recorder(label="a"), inputs={"x": "b.pred"}),
        "b": NodeSpec(Recorder(label="b"), inputs={"x": "a.pred"}, output=True),
    }
    with pytest.raises(InvalidSystemError, match="cycle: a -> b -> a|cycle: b -> a -> b"):
        System(specs)


def test_wrong_kind_and_unwired_input_are_reported():
    class WantsImage(Recorder):
        input_kinds = {"x": "image"}

    specs = {
        "data": GaussianSource(weights={"y": [1.0, 1.0]}),
        "a": NodeSpec(WantsImage(label="a"), inputs={"x": "data.x"}, output=True),
        "b": NodeSpec(Recorder(label="b"), inputs={}, output=True),
    }
    with pytest.raises(InvalidSystemError) as info:
        System(specs)
    text = str(info.value)
    assert "node 'a', field 'inputs.x': 'data.x' is of kind 'array' but input 'x' expects kind 'image'" in text
    assert "node 'b', field 'inputs.x': required input is not wired" in text


def test_duplicate_names_are_rejected():
    with pytest.raises(InvalidSystemError, match="node 'a': duplicate name"):
        System([("data", GaussianSource(weights={"y": [1.0, 1.0]})),
                ("a", NodeSpec(Recorder(label="a"), inputs={"x": "data.x"}, output=True)),
                ("a", NodeSpec(Recorder(label="a2"), inputs={"x": "data.x"}, output=True))])


def test_fit_runs_in_topological_order(store):
    Recorder.log = []
    specs = {
        "data": GaussianSource(weights={"y": [1.0, 1.0]}, sizes={"train": 5, "test": 5}),
        "c": NodeSpec(Recorder(label="c"), inputs={"x": "b.pred"}, output=True),
        "a": NodeSpec(Recorder(label="a"), inputs={"x": "data.x"}),
        "b": NodeSpec(Recorder(label="b"), inputs={"x": "a.pred"}),
    }
    run = Run(System(specs), 0, store).run_all()
    assert Recorder.log == ["a", "b", "c"]
    x = GaussianSource(weights={"y": [1.0, 1.0]}, sizes={"train": 5, "test": 5}).load("test", 0)["x"]
    np.testing.assert_allclose(run.values("c", "test")["pred"], x[:, 0] + 3.0)


def test_changing_a_node_retrains_exactly_its_descendants(store):
    system = System(chain(alpha=1.0))
    LocalExecutor().run(system, [0], store)
    assert store.stats.misses == 2
    changed = system.replace("up", SklearnNode(estimator=Ridge(alpha=50.0)))
    before = store.stats.misses
    LocalExecutor().run(changed, [0], store)
    assert store.stats.misses - before == 2  # up and its descendant down
    # changing only the leaf keeps the upstream entry
    leaf = system.replace("down", SklearnNode(estimator=Ridge(alpha=3.0)))
    h0, m0 = store.stats.hits, store.stats.misses
    LocalExecutor().run(leaf, [0], store)
    assert (store.stats.hits - h0, store.stats.misses - m0) == (1, 1)


def test_function_nodes_are_recomputed_not_stored(store):
    specs = chain()
    specs["scale"] = NodeSpec(FunctionNode(fn=scaled, kwargs={"factor": 2.0}, outputs=("out",)),
                              inputs={"s": "up.pred"})
    specs["down"] = NodeSpec(SklearnNode(estimator=LinearRegression()), inputs={"s": "scale.out"},
                             targets={"y": "data.y"}, output=True)
    run = Run(System(specs), 0, store).run_all()
    np.testing.assert_allclose(run.values("scale", "test")["out"], 2 * run.values("up", "test")["pred"])
    assert store.stats.misses == 2


def test_replace_returns_a_new_system_and_keeps_wiring():
    system = System(chain())
    other = system.replace("up", SklearnNode(estimator=Ridge(alpha=9.0)))
    assert other is not system
    assert system["up"].estimator.alpha == 1.0 and other["up"].estimator.alpha == 9.0
    assert other.specs["up"].inputs == system.specs["up"].inputs


def test_from_config_reports_unknown_target_and_typo_together():
    cfg = {"nodes": {
        "data": {"_target_": "entangle.data.toys.GaussianSource", "weights": {"y": [1.0, 1.0]}},
        "m": {"_target_": "entangle.node.NoSuchNode", "inputs": {"x": "data.x"}},
        "n": {"_target_": "entangle.node.SklearnNode", "inputs": {"x": "dat.x"}, "targets": {"y": "data.y"},
              "output": True},
    }}
    with pytest.raises(InvalidSystemError) as info:
        System.from_config(cfg, where="pipeline/mine.yaml")
    text = str(info.value)
    assert "pipeline/mine.yaml" in text
    assert "node 'm', field '_target_' (entangle.node.NoSuchNode)" in text
    assert "node 'n', field 'inputs.x': reference 'dat.x' names no node 'dat' (did you mean 'data'?)" in text
    assert "estimator" in text  # the missing required field of SklearnNode


def test_predict_with_overrides_reuses_fitted_nodes(store):
    system = System(chain())
    run = Run(system, 0, store).run_all()
    misses = store.stats.misses
    x = run.values("data", "test")["x"]
    same = run.predict_with({("data", "x"): x})
    assert same["down"]["metrics"] == pytest.approx(run.metrics("down"))
    np.testing.assert_allclose(same["up"]["loss"], run.losses("up"))
    noisy = run.predict_with({("data", "x"): x + np.random.default_rng(0).normal(0, 2.0, x.shape)})
    assert noisy["up"]["metrics"]["mse"] > 2 * run.metrics("up")["mse"]
    assert set(noisy) == {"up", "down"}
    assert store.stats.misses == misses  # nothing retrained


# -- fine-tuning from another node, and a node shared by every seed ------------------------------

class WarmRidge(BaseNode):
    """Ridge regression pulled towards a starting weight vector (another node's fitted one)."""

    input_kinds = {"x": "array"}
    target_kinds = {"y": "array"}
    output_kinds = {"pred": "array"}
    metric = "mse"

    def __init__(self, *, alpha: float = 1.0):
        self.alpha = alpha

    def init_from(self, other: "WarmRidge") -> None:
        self.start_ = np.asarray(other.w_, dtype=np.float64)

    def fit(self, inputs, targets, *, seed):
        x, y = np.asarray(inputs["x"], float), np.asarray(targets["y"], float)
        start = getattr(self, "start_", np.zeros(x.shape[1]))
        # argmin |xw - y|^2 + alpha |w - start|^2
        self.w_ = np.linalg.solve(x.T @ x + self.alpha * np.eye(x.shape[1]), x.T @ y + self.alpha * start)
        self.seed_ = seed
        return self

    def predict(self, inputs):
        return {"pred": np.asarray(inputs["x"], float) @ self.w_}

    def loss(self, predictions, targets):
        return (predictions["pred"] - np.asarray(targets["y"], float)) ** 2

    def score(self, predictions, targets):
        return {"mse": float(np.mean(self.loss(predictions, targets)))}

    def state_dict(self):
        return {"w_": self.w_, "seed_": np.asarray(self.seed_)}

    def load_state_dict(self, state):
        self.w_, self.seed_ = np.asarray(state["w_"]), int(state["seed_"])
        return self


def pretrain_system(**tune) -> System:
    from entangle.data.toys import GaussianSource
    return System({
        "data": GaussianSource(weights={"y": [1.0, 2.0]}, noise={"y": 0.1},
                               sizes={"train": 30, "test": 20}, data_seed=0),   # the same data per seed
        "pre": NodeSpec(WarmRidge(alpha=0.1), inputs={"x": "data.x"}, targets={"y": "data.y"}, seed=0,
                        output=True),
        "tuned": NodeSpec(WarmRidge(alpha=1e6), inputs={"x": "data.x"}, targets={"y": "data.y"},
                          init="pre", output=True, **tune),
    })


def test_init_fine_tunes_from_another_nodes_fitted_state_and_a_fixed_seed_fits_once(store):
    from entangle.executor import LocalExecutor
    system = pretrain_system()
    keys = [system.keys(s) for s in (0, 1, 2)]
    assert len({k["pre"] for k in keys}) == 1           # one pretraining for every seed
    assert len({k["tuned"] for k in keys}) == 3
    assert system.graph.has_edge("pre", "tuned")
    runs = LocalExecutor().run(system, [0, 1, 2], store)
    assert store.stats.misses == 1 + 3 and store.stats.hits == 2
    for s in (0, 1, 2):
        pre, tuned = runs[s].fitted("pre"), runs[s].fitted("tuned")
        assert pre.seed_ == 0 and tuned.seed_ == s
        # a huge pull towards the start: the fine-tuned weights stay at the pretrained ones
        np.testing.assert_allclose(tuned.w_, pre.w_, atol=1e-3)
    # the pretrained node's key is part of the fine-tuned one: another pretraining, another key
    other = pretrain_system().replace("pre", NodeSpec(WarmRidge(alpha=5.0), inputs={"x": "data.x"},
                                                      targets={"y": "data.y"}, seed=0, output=True))
    assert other.keys(0)["tuned"] != keys[0]["tuned"]


def test_init_and_seed_are_validated():
    from entangle.data.toys import GaussianSource
    from entangle.system import InvalidSystemError
    data = GaussianSource(weights={"y": [1.0, 2.0]})
    with pytest.raises(InvalidSystemError) as info:
        System({"data": data,
                "a": NodeSpec(WarmRidge(), inputs={"x": "data.x"}, targets={"y": "data.y"}, init="nope",
                              output=True),
                "b": NodeSpec(Ridgeish(), inputs={"x": "data.x"}, targets={"y": "data.y"}, init="a",
                              output=True),
                "c": NodeSpec(WarmRidge(), inputs={"x": "data.x"}, targets={"y": "data.y"}, init="data",
                              seed=-3, output=True)})
    text = str(info.value)
    assert "node 'a', field 'init': names no node 'nope'" in text
    assert "node 'b', field 'init': Ridgeish cannot start from another node's state" in text
    assert "node 'c', field 'init': 'data' is not a fitted model" in text
    assert "node 'c', field 'seed': a fixed seed must be an int >= 0, got -3" in text


class Ridgeish(WarmRidge):
    """The same model without a warm start."""

    init_from = None   # type: ignore[assignment]


def test_a_node_may_predict_on_some_splits_only_when_nobody_reads_it(store):
    from entangle.executor import LocalExecutor
    from entangle.node import NodeError
    system = pretrain_system().with_spec("pre", splits=("test",))
    runs = LocalExecutor().run(system, [0], store)
    meta = store.meta(runs[0].keys["pre"])
    assert sorted(meta["metrics"]) == ["test"] and not any(a.startswith("pred/train") for a in meta["arrays"])
    assert runs[0].fitted("tuned").w_.shape == (2,)          # the fine-tuning still starts from it
    with pytest.raises(NodeError, match=r"predicts only on splits \['test'\]"):
        runs[0].values("pre", "train")
    assert system.keys(0)["pre"] != pretrain_system().keys(0)["pre"]
    from entangle.data.toys import GaussianSource
    with pytest.raises(InvalidSystemError, match="other nodes read its outputs"):
        System({"data": GaussianSource(weights={"y": [1.0, 2.0]}),
                "a": NodeSpec(WarmRidge(), inputs={"x": "data.x"}, targets={"y": "data.y"}, splits=("test",)),
                "b": NodeSpec(WarmRidge(), inputs={"x": "a.pred"}, targets={"y": "data.y"}, output=True)})
