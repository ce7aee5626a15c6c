"""WorldSource: renders once, decodes once, and serves per-pixel arrays memory-mapped."""

from __future__ import annotations

import numpy as np

import entangle.data.world_source as ws
from entangle.node import Ragged


def test_split_is_decoded_once_and_memory_mapped(tmp_path, monkeypatch):
    monkeypatch.setattr(ws, "GENERATED", tmp_path)
    ws._load_split.cache_clear()
    src = ws.WorldSource(n_scenes=8, seed=3, limits={"train": 4}, workers=1)
    first = src.load("train", seed=0)
    assert len(first["left"]) == 4 and isinstance(first["labels"], Ragged)
    caches = [p for p in (tmp_path / "arrays").iterdir() if (p / "done").is_file()]
    assert len(caches) == 1
    ws._load_split.cache_clear()
    calls = []
    monkeypatch.setattr(ws, "_decode_split", lambda *a: calls.append(a))   # must not decode again
    again = src.load("train", seed=0)
    assert calls == []
    for name in ws.MAPPED:
        assert isinstance(again[name], np.memmap) and not again[name].flags.writeable
        np.testing.assert_array_equal(again[name], first[name])
    np.testing.assert_array_equal(again["labels"].values, first["labels"].values)
    np.testing.assert_array_equal(again["calib"], first["calib"])
    ws._load_split.cache_clear()
