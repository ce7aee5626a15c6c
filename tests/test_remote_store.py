"""The fsspec remote tier: sharing entries between local stores, integrity, concurrency, config."""

from __future__ import annotations

import threading
import uuid

import numpy as np
import pytest
import torch

fsspec = pytest.importorskip("fsspec")

from entangle.node import Ragged  # noqa: E402
from entangle.remote_store import RemoteStore  # noqa: E402
from entangle.store import Store, StoreError  # noqa: E402

KEY = "cd" + "1" * 62


def entry():
    arrays = {"pred/test/a": np.arange(10.0), "loss/test": np.linspace(0, 1, 10),
              "pred/test/r": Ragged.from_list([np.ones((2, 3)), np.zeros((0, 3))])}
    state = {"w": torch.arange(4.0), "coef_": np.array([1.5, 2.5]), "n_": 3}
    return {"meta": {"node": "m", "metrics": {"test": {"mse": 0.5}}}, "state": state, "arrays": arrays}


@pytest.fixture(params=["memory", "file"])
def remote(request, tmp_path):
    """A fresh remote URL per test: fsspec's in-memory filesystem, or a local folder as file://."""
    if request.param == "memory":
        url = f"memory://entangle-test-{uuid.uuid4().hex}"
        yield url
        fs = fsspec.filesystem("memory")
        if fs.exists(url):
            fs.rm(url, recursive=True)
    else:
        yield (tmp_path / "remote").as_uri()


def test_entry_put_by_one_store_is_read_by_another(tmp_path, remote):
    a, b = RemoteStore(tmp_path / "a", remote), RemoteStore(tmp_path / "b", remote)
    assert not b.has(KEY) and list(b.keys()) == []
    assert a.put(KEY, **entry())
    assert b.has(KEY) and list(b.keys()) == [KEY]
    assert not Store(tmp_path / "b").has(KEY)  # nothing downloaded yet
    st = b.state(KEY)
    assert torch.equal(st["w"], torch.arange(4.0)) and st["n_"] == 3
    np.testing.assert_array_equal(st["coef_"], [1.5, 2.5])
    preds = b.arrays(KEY, "pred/test")
    np.testing.assert_array_equal(preds["a"], np.arange(10.0))
    assert isinstance(preds["r"], Ragged) and preds["r"].lengths().tolist() == [2, 0]
    assert b.meta(KEY)["metrics"] == {"test": {"mse": 0.5}}
    local_b = Store(tmp_path / "b")
    assert local_b.has(KEY) and local_b.verify(KEY) == [] and b.verify(KEY) == []
    assert local_b.meta(KEY) == a.meta(KEY)  # the same entry, byte for byte
    assert list((tmp_path / "b" / "tmp").iterdir()) == []


def test_a_remote_entry_without_meta_is_invisible(tmp_path, remote):
    a = RemoteStore(tmp_path / "a", remote)
    a.put(KEY, **entry())
    a.fs.rm(f"{a.remote_path(KEY)}/meta.json")  # an upload cut off before its commit marker
    b = RemoteStore(tmp_path / "b", remote)
    assert not b.has(KEY) and list(b.keys()) == []
    with pytest.raises(KeyError):
        b.meta(KEY)
    assert not Store(tmp_path / "b").has(KEY)


def test_corrupt_remote_file_is_caught_and_never_published(tmp_path, remote):
    a = RemoteStore(tmp_path / "a", remote)
    a.put(KEY, **entry())
    [path] = [p for p in a.fs.find(a.remote_path(KEY)) if p.endswith("loss/test.npy")]
    data = a.fs.cat_file(path)
    a.fs.pipe_file(path, data[:-8] + b"\x00" * 8)
    b = RemoteStore(tmp_path / "b", remote)
    assert b.has(KEY)  # visible remotely...
    with pytest.raises(StoreError, match=rf"{KEY[:12]}.*loss/test.npy does not match its checksum"):
        b.arrays(KEY, "loss")
    assert not Store(tmp_path / "b").has(KEY)  # ...but never published locally
    assert list((tmp_path / "b" / "tmp").iterdir()) == []
    assert any("checksum" in p for p in b.verify(KEY))
    b.remove(KEY)  # the way out: drop the bad entry everywhere, the next run refits it
    assert not b.has(KEY) and not a.fs.exists(a.remote_path(KEY))


def test_concurrent_writers_of_one_key_both_succeed(tmp_path, remote):
    stores = [RemoteStore(tmp_path / f"w{i}", remote) for i in range(2)]
    barrier, errors, results = threading.Barrier(2), [], []

    def write(store):
        try:
            barrier.wait()
            results.append(store.put(KEY, **entry()))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and results == [True, True]  # each published at least locally
    assert all(s.verify(KEY) == [] for s in stores)
    reader = RemoteStore(tmp_path / "r", remote)
    assert reader.verify(KEY) == []  # whichever meta.json won names a complete set of files
    assert torch.equal(reader.state(KEY)["w"], torch.arange(4.0))
    assert not stores[0].put(KEY, **entry())  # already everywhere: a no-op


def test_keys_union_and_remove_both_tiers(tmp_path, remote):
    other = "ef" + "2" * 62
    a, b = RemoteStore(tmp_path / "a", remote), RemoteStore(tmp_path / "b", remote)
    a.put(KEY, **entry())
    Store(tmp_path / "b").put(other, meta={}, arrays={"loss/test": np.ones(2)})  # local only
    assert sorted(b.keys()) == sorted([KEY, other])
    b.state(KEY)
    b.remove(KEY)
    assert not b.has(KEY) and a.has(KEY)  # gone from b and the remote; a keeps its local copy
    assert list(RemoteStore(tmp_path / "c", remote).keys()) == []


def test_bad_keys_and_unknown_protocols_are_rejected(tmp_path, remote):
    s = RemoteStore(tmp_path / "a", remote)
    for bad in ["../x", "ab/../../etc", "", KEY + "/"]:
        with pytest.raises(StoreError, match="invalid store key"):
            s.has(bad)
        with pytest.raises(StoreError, match="invalid store key"):
            s.put(bad, meta={})
    with pytest.raises(StoreError, match=r"nope://bucket/x.*Protocol not known"):
        RemoteStore(tmp_path / "b", "nope://bucket/x")



def test_missing_fsspec_names_the_extra(tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "fsspec.core", None)  # as if fsspec were not installed
    with pytest.raises(StoreError, match=r"pip install 'entangle\[remote\]'"):
        RemoteStore(tmp_path / "a", "memory://x")

def test_remote_file_names_cannot_escape_the_entry(tmp_path, remote):
    import json

    from entangle.store import meta_checksum
    a = RemoteStore(tmp_path / "a", remote)
    a.put(KEY, **entry())
    meta_path = f"{a.remote_path(KEY)}/meta.json"
    meta = json.loads(a.fs.cat_file(meta_path))
    meta["files"]["../../escape.npy"] = "0" * 64
    meta["checksum"] = meta_checksum(meta)   # a writer of the remote can forge the checksum too
    a.fs.pipe_file(meta_path, json.dumps(meta).encode())
    b = RemoteStore(tmp_path / "b", remote)
    with pytest.raises(StoreError, match="invalid file name"):
        b.meta(KEY)
    assert not (tmp_path / "b" / "escape.npy").exists() and not Store(tmp_path / "b").has(KEY)


def test_study_on_a_second_machine_recomputes_nothing(compose_cfg, tmp_path, monkeypatch):
    monkeypatch.delenv("ENTANGLE_STORE_REMOTE", raising=False)
    from entangle.cli import run
    from entangle.study import store_from_config as make_store

    url = f"memory://entangle-test-{uuid.uuid4().hex}"
    common = ("experiment=toy_pipeline", "profile=quick", f"store.remote={url}")
    try:
        cfg = compose_cfg(*common, f"store.root={tmp_path / 's1'}", run_dir=tmp_path / "r1")
        assert isinstance(make_store(cfg), RemoteStore)
        first = run(cfg)
        assert first["store"]["misses"] == 18
        second = run(compose_cfg(*common, f"store.root={tmp_path / 's2'}", run_dir=tmp_path / "r2"))
        assert second["store"]["misses"] == 0 and second["store"]["hits"] == 18
        assert second["nodes"] == first["nodes"]
        local = Store(tmp_path / "s2")
        downloaded = list(local.keys())
        assert downloaded and all(local.verify(k) == [] for k in downloaded)
    finally:
        fsspec.filesystem("memory").rm(url, recursive=True)
    plain = compose_cfg("experiment=toy_pipeline", f"store.root={tmp_path / 's3'}")
    assert type(make_store(plain)) is Store  # store.remote defaults to null


def test_process_pool_workers_upload_their_fits(compose_cfg, tmp_path, monkeypatch):
    """Workers of executor=processes reopen both tiers: their fits reach the remote too."""
    monkeypatch.delenv("ENTANGLE_STORE_REMOTE", raising=False)
    from entangle.cli import run

    url = (tmp_path / "remote").as_uri()            # file://: spawned workers share it
    common = ("experiment=toy_pipeline", "profile=quick", "seeds=[0,1]", f"store.remote={url}")
    first = run(compose_cfg(*common, "executor=processes", "executor.workers=2",
                            f"store.root={tmp_path / 's1'}", run_dir=tmp_path / "r1"))
    assert first["store"]["misses"] == 12
    second = run(compose_cfg(*common, f"store.root={tmp_path / 's2'}", run_dir=tmp_path / "r2"))
    assert second["store"]["misses"] == 0 and second["nodes"] == first["nodes"]
