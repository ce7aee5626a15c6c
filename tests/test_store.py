"""The store: golden keys, key sensitivity, atomic publish, safe loading, verification."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge

from entangle.data.toys import GaussianSource
from entangle.hashing import UnhashableError, fingerprint, key_of
from entangle.node import Ragged, SklearnNode
from entangle.store import Store, StoreError, check_key
from entangle.system import NodeSpec, System

KEY = "ab" + "0" * 62


def small_system(alpha=1.0, n_train=50):
    return System({
        "data": GaussianSource(weights={"y": [1.0, 2.0]}, sizes={"train": n_train, "test": 20}),
        "m": NodeSpec(SklearnNode(estimator=Ridge(alpha=alpha)), inputs={"x": "data.x"},
                      targets={"y": "data.y"}, output=True),
    })


def test_golden_fingerprint_and_key_are_stable():
    # A canonical payload must hash the same on every machine and run: pinned values.
    params = {"alpha": 1.0, "n": 3, "name": "x", "w": [1, 2.5], "nested": {"b": None, "a": True}}
    payload = {"class": "pkg.Node", "params": fingerprint(params)}
    assert key_of(payload) == "a89b438c426e3defa96a0807eeef771b886453c2d48dd668ef94cc2157aae7da"
    reordered = {"nested": {"a": True, "b": None}, "w": [1, 2.5], "name": "x", "n": 3, "alpha": 1.0}
    assert key_of({"params": fingerprint(reordered), "class": "pkg.Node"}) == key_of(payload)
    arr = fingerprint(np.arange(6, dtype=np.int32).reshape(2, 3))
    assert arr == {"__ndarray__": "cd9a54ed1f18bf97db08914e280ea7349e11ca2c4885a4d8052552ceba84208d",
                   "dtype": "int32", "shape": [2, 3]}
    assert fingerprint(np.arange(6, dtype=np.int64)) != fingerprint(np.arange(6, dtype=np.int32))
    assert fingerprint(np.zeros((2, 3))) != fingerprint(np.zeros((3, 2)))


def test_key_changes_with_spec_input_and_seed_but_not_otherwise():
    base = small_system().keys(0)
    assert small_system().keys(0) == base  # unchanged spec -> same keys
    assert small_system(alpha=2.0).keys(0)["m"] != base["m"]  # changed spec
    changed_input = small_system(n_train=60).keys(0)
    assert changed_input["data"] != base["data"] and changed_input["m"] != base["m"]  # changed input
    assert small_system().keys(1)["m"] != base["m"]  # seed


def test_unknown_parameter_type_raises_instead_of_hashing_to_a_constant():
    class Opaque:
        pass

    with pytest.raises(UnhashableError, match="Opaque"):
        fingerprint(Opaque())
    with pytest.raises(UnhashableError):
        fingerprint(np.array([object()], dtype=object))


def test_code_version_changes_when_class_source_changes(tmp_path):
    src = tmp_path / "mynode_mod.py"
    body = "from entangle.node import BaseNode\nclass N(BaseNode):\n    def f(self):\n        return {}\n"
    src.write_text(body)
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(tmp_path)!r})
        from entangle.hashing import code_version
        import mynode_mod; print(code_version(mynode_mod.N))
    """)
    v1 = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    src.write_text(body.replace("return {}", "return {'x': 1}"))
    v2 = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert v1.strip() and v1 != v2


def test_put_and_read_round_trip(store):
    arrays = {"pred/test/a": np.arange(10.0), "pred/test/r": Ragged.from_list([np.ones((2, 3)), np.zeros((0, 3))]),
              "loss/test": np.linspace(0, 1, 10)}
    state = {"w": torch.arange(4.0), "coef_": np.array([1.5, 2.5]), "n_": 3}
    assert store.put(KEY, meta={"node": "x"}, state=state, arrays=arrays)
    assert store.has(KEY)
    preds = store.arrays(KEY, "pred/test")
    np.testing.assert_array_equal(preds["a"], np.arange(10.0))
    assert isinstance(preds["r"], Ragged) and preds["r"].lengths().tolist() == [2, 0]
    st = store.state(KEY)
    assert torch.equal(st["w"], torch.arange(4.0)) and st["n_"] == 3
    assert store.verify(KEY) == []
    assert not store.put(KEY, meta={"node": "x"}, arrays=arrays)  # second writer: no-op


def test_verify_detects_corruption(store):
    store.put(KEY, meta={}, arrays={"loss/test": np.arange(5.0)})
    path = store.path(KEY) / "loss" / "test.npy"
    path.write_bytes(path.read_bytes()[:-8] + b"\x00" * 8)
    assert any("checksum" in p for p in store.verify(KEY))


def test_failed_write_leaves_no_entry_and_no_temp(store):
    class Boom:
        def __array__(self, *a, **k):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        store.put(KEY, meta={}, arrays={"pred/test/a": np.ones(3), "pred/test/b": Boom()})
    assert not store.has(KEY)
    assert list((store.root / "tmp").iterdir()) == []


def test_killed_writer_leaves_no_visible_entry(tmp_path):
    root = tmp_path / "s"
    code = textwrap.dedent(f"""
        import os, numpy as np
        from entangle.store import Store
        s = Store({str(root)!r})
        import entangle.store as m
        real = m.os.rename
        def die(*a): os._exit(9)   # killed between writing and publishing
        m.os.rename = die
        s.put({KEY!r}, meta={{}}, arrays={{"loss/test": np.arange(1000.0)}})
    """)
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == 9
    store = Store(root)
    assert not store.has(KEY)
    assert store.put(KEY, meta={}, arrays={"loss/test": np.arange(3.0)})  # the next run resumes
    assert store.verify(KEY) == []


def test_keys_and_names_cannot_escape_the_root(store):
    for bad in ["../x", "ab/../../etc", "", "A" * 64, KEY + "/"]:
        with pytest.raises(StoreError):
            check_key(bad)
    with pytest.raises(StoreError, match="invalid array name"):
        store.put(KEY, meta={}, arrays={"pred/../../x": np.ones(2)})


def test_state_rejects_objects_that_would_need_pickling(store):
    with pytest.raises(StoreError, match="no pickling"):
        store.put(KEY, meta={}, state={"model": {"a": object()}})


def test_read_only_store_gives_a_clear_error(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores file permissions")
    root = tmp_path / "ro"
    root.mkdir()
    os.chmod(root, 0o500)
    try:
        with pytest.raises(StoreError, match="not writable|read-only"):
            Store(root).put(KEY, meta={}, arrays={"loss/test": np.ones(2)})
    finally:
        os.chmod(root, 0o700)
