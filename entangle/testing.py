"""A contract check every node must pass, in the spirit of scikit-learn's ``check_estimator``.

``check_node(node, inputs, targets)`` asserts: ``fit`` returns ``self``; hyperparameters are
unchanged by ``fit``; the same seed gives the same predictions; ``loss`` gives finite per-sample
numbers; ``score`` holds the node's metric; and the fitted state round-trips through a store
(no pickling) to identical predictions. Node authors call it in their tests.
"""

from __future__ import annotations

import tempfile
from typing import Any, Mapping

import numpy as np

from entangle.hashing import fingerprint
from entangle.node import BaseNode, Ragged


def _assert_same(a: Any, b: Any, where: str) -> None:
    if isinstance(a, Ragged):
        assert isinstance(b, Ragged), f"{where}: Ragged vs {type(b).__name__}"
        np.testing.assert_array_equal(a.offsets, b.offsets, err_msg=where)
        np.testing.assert_array_equal(a.values, b.values, err_msg=where)
    else:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=where)


def check_node(node: BaseNode, inputs: Mapping[str, Any], targets: Mapping[str, Any],
               seed: int = 0, eval_inputs: Mapping[str, Any] | None = None,
               eval_targets: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run the node contract; raises AssertionError naming the broken rule. Returns predictions."""
    name = type(node).__name__
    eval_inputs = inputs if eval_inputs is None else eval_inputs
    eval_targets = targets if eval_targets is None else eval_targets
    params_before = fingerprint(node.get_params())
    clone = node.clone()
    assert fingerprint(clone.get_params()) == params_before, f"{name}: clone changes params"

    fitted = clone.fit(inputs, targets, seed=seed)
    assert fitted is clone, f"{name}: fit must return self"
    assert fingerprint(clone.get_params()) == params_before, f"{name}: fit changed its hyperparameters"
    preds = clone.predict(eval_inputs)
    assert set(node.output_kinds) >= set(preds) or not node.output_kinds, \
        f"{name}: predict returned {sorted(preds)} beyond declared outputs {sorted(node.output_kinds)}"

    again = node.clone().fit(inputs, targets, seed=seed).predict(eval_inputs)
    for out in preds:
        _assert_same(preds[out], again[out], f"{name}: same seed gave different output {out!r}")

    if eval_targets:
        loss = np.asarray(clone.loss(preds, eval_targets))
        assert loss.ndim == 1, f"{name}: loss must be one number per sample, got shape {loss.shape}"
        assert np.all(np.isfinite(loss)), f"{name}: loss has NaN/inf"
        metrics = clone.score(preds, eval_targets)
        assert node.metric in metrics, f"{name}: score lacks its metric {node.metric!r}"

    from entangle.store import Store
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp)
        key = "f" * 64
        store.put(key, meta={}, state=clone.state_dict())
        restored = node.clone().load_state_dict(store.state(key))
        back = restored.predict(eval_inputs)
        for out in preds:
            _assert_same(preds[out], back[out], f"{name}: store round-trip changed output {out!r}")
    return preds
