"""``entangle store list`` and ``size`` show every folder of the store: an incomplete one is marked."""

from __future__ import annotations

from entangle.store import Store
from entangle.store_cli import main

KEYS = ["ab" + "0" * 62, "cd" + "1" * 62]


def test_a_folder_without_meta_json_is_listed_as_incomplete(tmp_path, capsys):
    store = Store(tmp_path / "s")
    store.put(KEYS[0], meta={"node": "m", "seed": 0}, arrays={"loss/test": [1.0, 2.0]})
    store.path(KEYS[1]).mkdir(parents=True)          # what a writer killed mid-publish may leave
    (store.path(KEYS[1]) / "state.npz").write_bytes(b"partial")
    assert main(["list", "--root", str(store.root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith(KEYS[0][:16]) and " m " in out[1]
    assert out[2] == f"{KEYS[1][:16]}  INCOMPLETE (no meta.json; entangle store verify --repair removes it)"
    assert out[3] == f"1 entries, 1 incomplete in {store.root}"
    assert main(["size", "--root", str(store.root)]) == 0
    assert capsys.readouterr().out.splitlines()[1].endswith("(1 incomplete folders not counted)")
    assert main(["verify", "--root", str(store.root), "--repair"]) == 0
    capsys.readouterr()
    main(["list", "--root", str(store.root)])
    assert capsys.readouterr().out.splitlines()[-1] == f"1 entries in {store.root}"
