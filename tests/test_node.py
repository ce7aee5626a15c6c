"""The node contract on every adapter (fit returns self, determinism, params, store round-trip)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.neighbors import KNeighborsClassifier

from entangle.models.mlp import MLP
from entangle.node import FunctionNode, NotFittedError, Ragged, SklearnNode, TorchNode
from entangle.testing import check_node


def data(n=120, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3))
    return x, x @ [1.0, -2.0, 0.5] + 0.1 * rng.standard_normal(n), (x[:, 0] > 0).astype(int)


def halve(x):
    return {"out": np.asarray(x) / 2}


@pytest.mark.parametrize("node,target", [
    (SklearnNode(estimator=Ridge(alpha=0.5)), "reg"),
    (SklearnNode(estimator=LogisticRegression()), "cls"),
    (TorchNode(module=functools.partial(MLP, in_features=3, hidden=8), criterion="mse", epochs=3), "reg"),
    (TorchNode(module=functools.partial(MLP, in_features=3, hidden=8, out_features=2),
               criterion="cross_entropy", epochs=3), "cls"),
    (FunctionNode(fn=halve), None),
])
def test_adapters_follow_the_node_contract(node, target):
    x, yr, yc = data()
    targets = {} if target is None else {"y": yr if target == "reg" else yc}
    preds = check_node(node, {"x": x}, targets)
    assert len(next(iter(preds.values()))) == len(x)


def test_sklearn_node_learns_and_reports_metrics():
    x, yr, yc = data(400)
    node = SklearnNode(estimator=Ridge(alpha=0.1)).fit({"x": x}, {"y": yr}, seed=0)
    assert node.metric == "mse" and not node.higher_is_better
    assert node.score(node.predict({"x": x}), {"y": yr})["mse"] < 0.02
    cls = SklearnNode(estimator=LogisticRegression()).fit({"x": x}, {"y": yc}, seed=0)
    assert cls.metric == "accuracy" and cls.higher_is_better
    assert cls.score(cls.predict({"x": x}), {"y": yc})["accuracy"] > 0.95


def test_torch_node_seed_changes_init_and_nan_loss_is_named():
    x, yr, _ = data()
    mk = functools.partial(MLP, in_features=3, hidden=8)
    a = TorchNode(module=mk, epochs=1).fit({"x": x}, {"y": yr}, seed=0).predict({"x": x})["pred"]
    b = TorchNode(module=mk, epochs=1).fit({"x": x}, {"y": yr}, seed=1).predict({"x": x})["pred"]
    assert not np.allclose(a, b)
    with pytest.raises(Exception, match="loss became nan at epoch 0, step 0 \\(seed 3\\)"):
        TorchNode(module=mk, epochs=1).fit({"x": x}, {"y": yr * np.nan}, seed=3)


def test_unfitted_nodes_fail_clearly_and_any_estimator_round_trips():
    x, _, yc = data()
    with pytest.raises(NotFittedError):
        SklearnNode(estimator=Ridge()).predict({"x": x})
    knn = SklearnNode(estimator=KNeighborsClassifier()).fit({"x": x}, {"y": yc}, seed=0)
    restored = SklearnNode(estimator=KNeighborsClassifier()).load_state_dict(knn.state_dict())
    np.testing.assert_array_equal(restored.predict({"x": x})["pred"], knn.predict({"x": x})["pred"])


def test_stored_estimator_with_foreign_types_is_refused():
    import skops.io as sio

    blob = sio.dumps({"payload": functools.partial(print, "hi")})
    with pytest.raises(TypeError, match="refusing to load"):
        SklearnNode(estimator=Ridge()).load_state_dict({"skops": np.frombuffer(blob, dtype=np.uint8)})


def test_ragged_checks_and_take():
    r = Ragged.from_list([np.ones((2, 3)), np.zeros((0, 3)), np.full((1, 3), 5.0)])
    assert len(r) == 3 and r.lengths().tolist() == [2, 0, 1]
    assert r.take(np.array([2, 0])).lengths().tolist() == [1, 2]
    with pytest.raises(ValueError, match="offsets end at"):
        Ragged(np.zeros((3, 2)), np.array([0, 1]))
