"""Trust: no silent wrong answer, never a stale fit, a store that repairs itself.

Each test is a bad input a user met (or a hostile one) and what they get now: a clear error that
names node, seed, system and split, or the right numbers -- never a wrong verdict with exit 0.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from entangle.cli import run
from entangle.compare import compare
from entangle.data.toys import GaussianSource
from entangle.executor import LocalExecutor, check_seeds
from entangle.node import BaseNode, NodeError, SklearnNode
from entangle.store import Store, StoreError
from entangle.system import NodeSpec, System
from entangle.study import ConfigError

REPO = Path(__file__).resolve().parent.parent


# -- a node whose misbehaviour is a parameter -----------------------------------------------------

class Faulty(BaseNode):
    """Least squares on ``x``; ``fault`` makes one part of the contract lie (None: behaves)."""

    input_kinds = {"x": "array"}
    target_kinds = {"y": "array"}
    output_kinds = {"pred": "array", "extra": "array"}
    metric = "mse"

    def __init__(self, *, fault: str | None = None, alpha: float = 1.0):
        self.fault = fault
        self.alpha = alpha

    def fit(self, inputs, targets, *, seed):
        x, y = np.asarray(inputs["x"], float), np.asarray(targets["y"], float)
        self.w_ = np.linalg.solve(x.T @ x + self.alpha * np.eye(x.shape[1]), x.T @ y)
        return self

    def predict(self, inputs):
        if self.fault == "predict_raises":
            raise RuntimeError("the model file is gone")
        pred = np.asarray(inputs["x"], float) @ self.w_
        if self.fault == "short_output":
            pred = pred[:-3]
        out = {"pred": pred}
        if self.fault != "missing_output":
            out["extra"] = pred * 0
        return out

    def loss(self, predictions, targets):
        if self.fault == "loss_raises":
            raise ValueError("shapes do not broadcast")
        per = (predictions["pred"] - np.asarray(targets["y"], float)) ** 2
        if self.fault == "nan_loss":
            per[5] = np.nan
        if self.fault == "short_loss":
            per = per[:-10]
        return per

    def score(self, predictions, targets):
        mse = float(np.mean(self.loss(predictions, targets)))
        return {"mse": float("nan") if self.fault == "nan_metric" else mse}

    def state_dict(self):
        return {"w_": self.w_}

    def load_state_dict(self, state):
        self.w_ = np.asarray(state["w_"])
        return self


class BrokenSource(GaussianSource):
    """A source whose ``load`` fails the way user code does."""

    def load(self, split, seed):
        raise TypeError("'<' not supported between instances of 'str' and 'float'")


def toy(down: BaseNode | None = None, source: BaseNode | None = None, reader: str = "extra") -> System:
    """data -> up (ridge) -> down (Faulty) -> tail (ridge on down's ``reader`` output)."""
    return System({
        "data": source or GaussianSource(variances=[1.0, 4.0], weights={"t": [1.0, 2.0], "y": [2.0, 1.0]},
                                         noise={"t": 0.5, "y": 0.5}, sizes={"train": 80, "test": 50}),
        "up": NodeSpec(SklearnNode(estimator=Ridge(alpha=1.0)), inputs={"x": "data.x"}, targets={"y": "data.t"}),
        "down": NodeSpec(down or Faulty(), inputs={"x": "data.x"}, targets={"y": "data.y"}),
        "tail": NodeSpec(SklearnNode(estimator=Ridge(alpha=1.0)), inputs={"s": f"down.{reader}", "u": "up.pred"},
                         targets={"y": "data.y"}, output=True),
    })


# -- silent wrong results ---------------------------------------------------------------------------

@pytest.mark.parametrize("bad, says", [
    ("[0,0,1]", "repeat"), ("[0,1.5]", "1.5"), ("[-1,0]", "-1"), ("[]", "non-empty"), ("3", "list"),
    ("[true,false]", "True"),
])
def test_seeds_must_be_distinct_non_negative_integers(compose_cfg, tmp_path, bad, says):
    cfg = compose_cfg("experiment=toy_pipeline", "profile=quick", f"seeds={bad}",
                      f"store.root={tmp_path / 's'}")
    with pytest.raises(ConfigError, match="distinct non-negative integers|distinct") as info:
        run(cfg)
    assert says in str(info.value)
    assert not (tmp_path / "s").exists()   # refused before anything was fitted


def test_library_calls_refuse_repeated_seeds_too(store):
    system = toy()
    with pytest.raises(ValueError, match=r"distinct .*\[0\] repeat"):
        compare(system, system.replace("down", Faulty(alpha=2.0)), [0, 0, 1], store)
    with pytest.raises(ValueError, match="distinct"):
        LocalExecutor().run(system, [1, 1], store)
    assert check_seeds([3, np.int64(4)]) == [3, 4]


@pytest.mark.parametrize("fault, says", [
    ("nan_loss", r"loss\(\) returned 1 NaN/inf values \(first for sample 5\)"),
    ("short_loss", r"loss\(\) returned shape \(70,\); it must hold one value per sample of the split \(80\)"),
    ("nan_metric", r"score\(\) returned nan for its metric 'mse'"),
    ("loss_raises", r"failed while scoring: ValueError: shapes do not broadcast"),
    ("predict_raises", r"failed while predicting: RuntimeError: the model file is gone"),
])
def test_a_node_that_breaks_its_contract_is_named_with_seed_system_and_split(store, fault, says):
    old = toy()
    new = old.replace("down", Faulty(fault=fault))
    with pytest.raises(NodeError) as info:
        compare(old, new, [0, 1], store)
    message = str(info.value)
    assert message.startswith("node 'down' (seed 0, new system, split 'train')"), message
    assert __import__("re").search(says, message), message
    # what the old system computed is kept: a rerun serves it from the store
    store.stats.hits = store.stats.misses = 0
    LocalExecutor().run(old.labelled("old system"), [0, 1], store)
    assert store.stats.misses == 0 and store.stats.hits == 6


def test_a_wrong_sample_count_is_blamed_on_its_producer(store):
    with pytest.raises(NodeError) as info:
        LocalExecutor().run(toy(Faulty(fault="short_output"), reader="pred"), [0], store)
    assert str(info.value).startswith("node 'down' (seed 0, split 'train'): output 'pred' has 77 rows "
                                      "but the split has 80 samples")


def test_a_missing_output_names_the_producer_and_the_reader(store):
    with pytest.raises(NodeError) as info:
        LocalExecutor().run(toy(Faulty(fault="missing_output")), [0], store)
    assert ("node 'down' (seed 0, split 'train') produced no output 'extra' (it produced ['pred']); "
            "node 'tail' reads it as 's'") in str(info.value)


def test_a_failing_source_is_named_like_a_failing_node(store):
    with pytest.raises(NodeError) as info:
        broken = BrokenSource(variances=[1.0, 4.0], weights={"t": [1.0, 2.0], "y": [2.0, 1.0]})
        compare(toy(source=broken), toy(Faulty(alpha=3.0), source=broken), [0], store)
    assert str(info.value) == ("source 'data' (seed 0, old system, split 'train') failed while loading: "
                               "TypeError: '<' not supported between instances of 'str' and 'float'")


@pytest.mark.parametrize("root", ["''", "null"])
def test_an_empty_store_root_is_refused(compose_cfg, tmp_path, root):
    cfg = compose_cfg("experiment=toy_pipeline", "profile=quick", f"store.root={root}")
    with pytest.raises(StoreError, match="store.root is empty"):
        run(cfg)
    with pytest.raises(StoreError, match="empty"):
        Store("")


def test_every_run_says_which_store_it_uses(compose_cfg, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    run(compose_cfg("experiment=toy_pipeline", "profile=quick", "seeds=[0,1]",
                    f"store.root={tmp_path / 'rel' / '..' / 'abs'}"))
    assert f"store: {tmp_path / 'abs'}" in caplog.text


def _store_cli(*args, env_store=None):
    env = {k: v for k, v in os.environ.items() if k != "ENTANGLE_STORE"}
    if env_store is not None:
        env["ENTANGLE_STORE"] = env_store
    return subprocess.run([sys.executable, "-m", "entangle", "store", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_store_command_refuses_empty_roots_and_needs_a_named_root_to_delete(tmp_path):
    empty = _store_cli("list", "--root", "")
    assert empty.returncode == 2 and "--root is empty" in empty.stderr
    prune = _store_cli("prune", "--older-than-days", "0")
    assert prune.returncode == 2 and "deletes entries: name the store with --root" in prune.stderr
    repair = _store_cli("verify", "--repair")
    assert repair.returncode == 2 and "name the store" in repair.stderr
    listed = _store_cli("list", env_store=str(tmp_path / "s"))
    assert listed.returncode == 0 and listed.stdout.startswith(f"store: {tmp_path / 's'} (ENTANGLE_STORE)")


def test_a_run_dir_holding_a_report_is_refused_unless_overwrite(compose_cfg, tmp_path):
    common = ("experiment=toy_pipeline", "profile=quick", "seeds=[0,1]", f"store.root={tmp_path / 's'}")
    run(compose_cfg(*common, run_dir=tmp_path / "r"))
    stale = tmp_path / "r" / "figure_of_an_old_run.png"
    stale.write_bytes(b"old")
    manifest = tmp_path / "r" / ".entangle-manifest.json"   # entangle's record of what it wrote
    manifest.write_text(json.dumps({"files": [*json.loads(manifest.read_text())["files"], stale.name]}))
    with pytest.raises(ConfigError, match="already holds a report .* overwrite=true"):
        run(compose_cfg(*common, run_dir=tmp_path / "r"))
    assert stale.exists()      # refused: nothing touched
    report = run(compose_cfg(*common, "overwrite=true", run_dir=tmp_path / "r"))
    assert not stale.exists()
    assert json.loads((tmp_path / "r" / "report.json").read_text())["nodes"] == json.loads(
        json.dumps(report["nodes"]))


def _cli(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([sys.executable, "-m", "entangle", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_cli_bad_values_give_one_line_and_exit_2(tmp_path):
    common = ["experiment=toy_pipeline", "profile=quick", f"store.root={tmp_path / 's'}"]
    cases = {
        "seeds=[0,0,1]": "entangle: error: seeds: seeds must be distinct",
        "seeds=[-1,2]": "entangle: error: seeds: seeds must be a non-empty list of distinct non-negative",
        "pipeline.nodes.data.sizes.train=high":
            "entangle: error: source 'data' (seed 0, old system, split 'train') failed while loading: "
            "ValueError: invalid literal for int() with base 10: 'high'",
        "store.root=": "entangle: error: store.root is empty",
    }
    for i, (override, expected) in enumerate(cases.items()):
        proc = _cli(*common, override, f"hydra.run.dir={tmp_path / f'run{i}'}", cwd=tmp_path)
        assert proc.returncode == 2, (override, proc.stderr)
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("entangle: error")]
        assert len(lines) == 1 and lines[0].startswith(expected), (override, proc.stderr)
        assert "Traceback" not in proc.stderr


# -- never a stale fit ------------------------------------------------------------------------------

USER_PACKAGE = {
    "mypkg/__init__.py": "",
    "mypkg/helpers.py": "def scale(x):\n    return 2.0 * x\n",
    "mypkg/nodes.py": textwrap.dedent('''
        import numpy as np
        from entangle.node import BaseNode
        from mypkg.helpers import scale

        class Scaled(BaseNode):
            input_kinds = {"x": "array"}
            target_kinds = {"y": "array"}
            output_kinds = {"pred": "array"}
            def __init__(self, *, alpha: float = 1.0):
                self.alpha = alpha
            def fit(self, inputs, targets, *, seed):
                self.w_ = np.ones(np.asarray(inputs["x"]).shape[1]) * self.alpha
                return self
            def predict(self, inputs):
                return {"pred": scale(np.asarray(inputs["x"]) @ self.w_)}
            def loss(self, predictions, targets):
                return (predictions["pred"] - targets["y"]) ** 2
            def state_dict(self):
                return {"w_": self.w_}
            def load_state_dict(self, state):
                self.w_ = np.asarray(state["w_"])
                return self
        '''),
    "study.py": textwrap.dedent('''
        import sys
        from sklearn.linear_model import Ridge
        from entangle.data.toys import GaussianSource
        from entangle.executor import LocalExecutor
        from entangle.node import SklearnNode
        from entangle.store import Store
        from entangle.system import NodeSpec, System
        from mypkg.nodes import Scaled
        system = System({
            "data": GaussianSource(weights={"y": [1.0, 2.0]}, sizes={"train": 40, "test": 20}),
            "scaled": NodeSpec(Scaled(), inputs={"x": "data.x"}, targets={"y": "data.y"}),
            "after": NodeSpec(SklearnNode(estimator=Ridge()), inputs={"s": "scaled.pred"},
                              targets={"y": "data.y"}, output=True),
            "beside": NodeSpec(SklearnNode(estimator=Ridge()), inputs={"x": "data.x"},
                               targets={"y": "data.y"}, output=True),
        })
        store = Store(sys.argv[1])
        runs = LocalExecutor().run(system, [0, 1], store)
        names = {k: n for r in runs.values() for n, k in r.keys.items()}
        print(sorted(names[k] for k in store.stats.miss_keys))
        '''),
}


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def _python(script: str, *args: str, cwd: Path, path: Path | None = None) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(path or cwd), os.environ.get("PYTHONPATH"))
                                                       if p))
    proc = subprocess.run([sys.executable, script, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_editing_a_helper_module_of_the_users_package_refits_what_runs_it(tmp_path):
    _write(tmp_path, USER_PACKAGE)
    store = str(tmp_path / "store")
    first = _python("study.py", store, cwd=tmp_path)
    assert first == str(sorted(["scaled", "after", "beside"] * 2))
    assert _python("study.py", store, cwd=tmp_path) == "[]"
    # the node class is untouched: only the helper module it imports changes
    (tmp_path / "mypkg" / "helpers.py").write_text("def scale(x):\n    return 3.0 * x\n")
    assert _python("study.py", store, cwd=tmp_path) == str(sorted(["scaled", "after"] * 2))
    assert _python("study.py", store, cwd=tmp_path) == "[]"


def test_editing_a_module_inside_entangle_refits_the_nodes_that_run_it(tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(REPO / "entangle", copy / "entangle", ignore=shutil.ignore_patterns("__pycache__"))
    script = tmp_path / "study.py"
    script.write_text(textwrap.dedent('''
        import sys
        from functools import partial
        from sklearn.linear_model import Ridge
        import entangle
        assert entangle.__file__.startswith(sys.argv[2]), entangle.__file__
        from entangle.data.toys import GaussianSource
        from entangle.executor import LocalExecutor
        from entangle.hashing import code_version
        from entangle.models.car_detector import CarDetector
        from entangle.models.mlp import MLP
        from entangle.models.stereo import StereoNet
        from entangle.node import SklearnNode, TorchNode
        from entangle.store import Store
        from entangle.system import NodeSpec, System
        system = System({
            "data": GaussianSource(weights={"y": [1.0, 2.0]}, sizes={"train": 40, "test": 20}),
            "ridge": NodeSpec(SklearnNode(estimator=Ridge()), inputs={"x": "data.x"}, targets={"y": "data.y"}),
            "mlp": NodeSpec(TorchNode(module=partial(MLP, in_features=1, hidden=4, out_features=1), epochs=2),
                            inputs={"s": "ridge.pred"}, targets={"y": "data.y"}, output=True),
        })
        store = Store(sys.argv[1])
        runs = LocalExecutor().run(system, [0], store)
        names = {k: n for r in runs.values() for n, k in r.keys.items()}
        print(code_version(StereoNet), code_version(CarDetector),
              sorted(names[k] for k in store.stats.miss_keys))
        '''))
    store = str(tmp_path / "store")
    before = _python(str(script), store, str(copy), cwd=tmp_path, path=copy).split(" ", 2)
    assert before[2] == "['mlp', 'ridge']"
    for module in ("models/stereo_net.py", "models/mlp.py"):   # helper modules, not node classes
        with open(copy / "entangle" / module, "a") as fh:
            fh.write("\nEDITED = True\n")   # code: a comment keeps the key
    after = _python(str(script), store, str(copy), cwd=tmp_path, path=copy).split(" ", 2)
    assert after[0] != before[0]          # StereoNet runs models/stereo_net.py
    assert after[1] == before[1]          # the car detector does not
    assert after[2] == "['mlp']"          # the MLP's module changed; the ridge is reused


def test_the_generated_worlds_key_follows_its_generator_code_and_full_config(monkeypatch):
    from entangle.data import world_source
    from entangle.data.world import WorldConfig
    src = world_source.WorldSource(n_scenes=10)
    fp = src.data_fingerprint()["generated"]
    assert fp["config"] == WorldConfig().to_dict() and fp["n_scenes"] == 10
    folder, key = src.folder(), System({"w": NodeSpec(src, output=True)}).keys(0)["w"]
    import entangle.hashing
    real = entangle.hashing.module_closure
    monkeypatch.setattr(entangle.hashing, "module_closure",
                        lambda name, top=None: real(name, top) + (("renderer", "edited"),))
    assert src.folder() != folder     # a new renderer renders a new world ...
    assert System({"w": NodeSpec(src, output=True)}).keys(0)["w"] != key   # ... under a new key


def test_speed_only_parameters_share_one_store_entry(store):
    from entangle.data.world_source import WorldSource
    from entangle.models.mlp_node import MLPNode
    keys = [System({"w": NodeSpec(WorldSource(n_scenes=10, workers=w), output=True)}).keys(0)["w"]
            for w in (1, 2)]
    assert keys[0] == keys[1]

    def system(device):
        return System({
            "data": GaussianSource(weights={"y": [1.0, 2.0]}, sizes={"train": 60, "test": 20}),
            "mlp": NodeSpec(MLPNode(hidden=[4], epochs=2, device=device), inputs={"x": "data.x"},
                            targets={"y": "data.y"}, output=True)})
    LocalExecutor().run(system("cpu"), [0], store)
    store.stats.hits = store.stats.misses = 0
    LocalExecutor().run(system("auto"), [0], store)
    assert (store.stats.hits, store.stats.misses) == (1, 0)


# -- a store that repairs itself ------------------------------------------------------------------------

def _numbers(runs) -> dict:
    return {(s, n): (r.metrics(n), r.losses(n).tolist()) for s, r in runs.items() for n in r.system.models()}


def _entry(store: Store, key: str) -> Path:
    return store.path(key)


def test_a_corrupt_upstream_prediction_is_refitted_not_read(tmp_path, caplog):
    system = toy(reader="pred")
    clean = _numbers(LocalExecutor().run(system, [0], Store(tmp_path / "clean")))
    store = Store(tmp_path / "s")
    runs = LocalExecutor().run(system, [0], store)
    up = runs[0].keys["up"]
    pred = _entry(store, up) / "pred" / "train" / "pred.npy"
    raw = bytearray(pred.read_bytes())
    raw[-8:] = b"\x00" * 8                 # same size: only the checksum can tell
    pred.write_bytes(bytes(raw))
    caplog.set_level(logging.WARNING)
    again = Store(tmp_path / "s")          # a new process: nothing verified yet
    assert _numbers(LocalExecutor().run(system, [0], again)) == clean
    assert f"node 'up' (seed 0): store entry {up[:12]}" in caplog.text and "fitting again" in caplog.text
    assert again.stats.miss_keys == [up] and again.verify(up) == []


def test_a_truncated_array_is_named_then_refitted(tmp_path, caplog):
    system = toy(reader="pred")
    store = Store(tmp_path / "s")
    clean = _numbers(LocalExecutor().run(system, [0], store))
    down = Store(tmp_path / "s").path(system.keys(0)["down"])
    loss = down / "loss" / "test.npy"
    loss.write_bytes(loss.read_bytes()[:40])
    fresh = Store(tmp_path / "s")
    from entangle.store import CorruptEntryError
    with pytest.raises(CorruptEntryError, match=r"store entry \w{12} of node 'down' \(seed 0\) is corrupt: "
                                                r"loss/test.npy does not match its checksum"):
        fresh.array(system.keys(0)["down"], "loss/test")
    caplog.set_level(logging.WARNING)
    assert _numbers(LocalExecutor().run(system, [0], Store(tmp_path / "s"))) == clean
    assert "node 'down' (seed 0)" in caplog.text


def test_an_incomplete_entry_no_longer_blocks_the_next_run(tmp_path):
    system = toy(reader="pred")
    clean = _numbers(LocalExecutor().run(system, [0], Store(tmp_path / "clean")))
    store = Store(tmp_path / "s")
    key = system.keys(0)["down"]
    orphan = store.path(key)
    (orphan / "pred" / "train").mkdir(parents=True)      # a crash between the files and the publish
    (orphan / "pred" / "train" / "pred.npy").write_bytes(b"half")
    assert _numbers(LocalExecutor().run(system, [0], store)) == clean
    assert store.verify(key) == []


def test_verify_reports_every_kind_of_damage_and_repair_removes_it(tmp_path):
    system = toy(reader="pred")
    store = Store(tmp_path / "s")
    LocalExecutor().run(system, [0, 1], store)
    k0, k1 = system.keys(0), system.keys(1)
    (store.path(k0["up"]) / "meta.json").write_text("{ not json")                     # garbage meta
    arr = store.path(k0["down"]) / "loss" / "test.npy"
    arr.write_bytes(arr.read_bytes()[:-1] + b"\x01")                                   # checksum
    (store.path(k1["up"]) / "meta.json").unlink()                                       # orphan
    meta = json.loads((store.path(k1["down"]) / "meta.json").read_text())
    meta["metrics"]["test"]["mse"] = 0.0                                                # forged number
    (store.path(k1["down"]) / "meta.json").write_text(json.dumps(meta))
    root = str(tmp_path / "s")
    for action in ("list", "size"):
        proc = _store_cli(action, "--root", root)
        assert proc.returncode == 0 and "broken" in proc.stdout, proc.stderr
    proc = _store_cli("verify", "--root", root)
    assert proc.returncode == 1, proc.stderr
    out = proc.stdout
    assert f"{k0['up'][:12]}: store entry {k0['up'][:12]}" in out and "not valid JSON" in out
    assert f"{k0['down'][:12]}: loss/test.npy does not match its checksum" in out
    assert f"{k1['up'][:12]}: no meta.json" in out
    assert f"{k1['down'][:12]}: store entry {k1['down'][:12]}" in out and "does not match its checksum" in out
    assert "4 problem(s)" in out
    repaired = _store_cli("verify", "--repair", "--root", root)
    assert repaired.returncode == 0 and "removed 4 broken" in repaired.stdout
    assert _store_cli("verify", "--root", root).returncode == 0
    fresh = Store(root)
    LocalExecutor().run(system, [0, 1], fresh)
    assert fresh.stats.misses == 4


# -- clear errors in one form: a dataset check that fails says so ---------------------------------

def test_check_dataset_fails_on_problems_paths_as_ids_and_binary_labels(tmp_path, compose_cfg):
    from entangle.cli import TaskFailed
    from entangle.data.kitti import Calib, Object3D, write_calib, write_label
    root = tmp_path / "data"
    for sub in ("image_2", "image_3", "label_2", "calib"):
        (root / "training" / sub).mkdir(parents=True)
    import cv2
    img = np.full((32, 64, 3), 128, np.uint8)
    eye = np.hstack([np.eye(3), np.zeros((3, 1))])
    calib = Calib(P0=eye, P1=eye, P2=eye, P3=eye, R0_rect=np.eye(3), Tr_velo_to_cam=eye, Tr_imu_to_velo=eye)
    for sid in ("000000", "000001"):
        for cam in ("image_2", "image_3"):
            cv2.imwrite(str(root / "training" / cam / f"{sid}.png"), img)
        write_calib(root / "training" / "calib" / f"{sid}.txt", calib)
    write_label(root / "training" / "label_2" / "000000.txt",
                [Object3D("Car", 0.0, 0, 0.0, np.array([1.0, 1, 20, 20]), np.array([1.5, 1.6, 3.9]),
                          np.array([0.0, 1.6, 10.0]), 0.0)])
    (root / "training" / "label_2" / "000001.txt").write_bytes(b"Car 0.00 0 \xff\xfe broken\n")
    (root / "ImageSets").mkdir()
    (root / "ImageSets" / "ok.txt").write_text("000000\n")
    (root / "ImageSets" / "evil.txt").write_text("000000\n../../etc/passwd\n")

    cfg = compose_cfg("experiment=check_dataset", f"data.root={root}", run_dir=tmp_path / "r1")
    with pytest.raises(TaskFailed, match="1 problem"):
        run(cfg)
    report = json.loads((tmp_path / "r1" / "report.json").read_text())   # written all the same
    assert report["problems"] == [{"file": "training/label_2/000001.txt", "line": 1, "field": None,
                                   "message": "label file is not UTF-8 text (byte 0xff at offset 11)"}]
    cfg = compose_cfg("experiment=check_dataset", f"data.root={root}", "data.split=evil", run_dir=tmp_path / "r2")
    with pytest.raises(TaskFailed, match="no valid frame"):
        run(cfg)
    problem = json.loads((tmp_path / "r2" / "report.json").read_text())["problems"][0]
    assert problem["line"] == 2 and "'../../etc/passwd' is not a plain name" in problem["message"]
    assert run(compose_cfg("experiment=check_dataset", f"data.root={root}", "data.split=ok",
                           run_dir=tmp_path / "r3"))["n_valid"] == 1
    proc = _cli("experiment=check_dataset", f"data.root={root}", f"hydra.run.dir={tmp_path / 'r4'}",
                cwd=tmp_path)
    assert proc.returncode == 1 and "entangle: error:" in proc.stderr and "report:" in proc.stderr


# -- property: kills and corruption between runs never change the numbers ------------------------

class _Killed(BaseException):
    """A crash: not an Exception, so nothing on the way catches it (like SIGKILL, minus the process)."""


class Lin(BaseNode):
    """Ridge regression in closed form on every input, concatenated: a fast deterministic node
    whose ``fit`` can be killed by the property test."""

    target_kinds = {"y": "array"}
    output_kinds = {"pred": "array"}
    metric = "mse"
    kill_countdown: list[int] = [-1]

    def __init__(self, *, alpha: float = 1.0):
        self.alpha = alpha

    def fit(self, inputs, targets, *, seed):
        Lin.kill_countdown[0] -= 1
        if Lin.kill_countdown[0] == 0:
            raise _Killed()
        x = np.column_stack([np.asarray(inputs[k], float).reshape(len(inputs[k]), -1) for k in sorted(inputs)])
        x = np.column_stack([x, np.full(len(x), float(seed))])     # the seed matters
        y = np.asarray(targets["y"], float)
        self.w_ = np.linalg.solve(x.T @ x + self.alpha * np.eye(x.shape[1]), x.T @ y)
        return self

    def predict(self, inputs):
        x = np.column_stack([np.asarray(inputs[k], float).reshape(len(inputs[k]), -1) for k in sorted(inputs)])
        return {"pred": np.column_stack([x, np.full(len(x), 0.0)]) @ self.w_}

    def loss(self, predictions, targets):
        return (predictions["pred"] - np.asarray(targets["y"], float)) ** 2

    def score(self, predictions, targets):
        return {"mse": float(np.mean(self.loss(predictions, targets)))}

    def state_dict(self):
        return {"w_": self.w_}

    def load_state_dict(self, state):
        self.w_ = np.asarray(state["w_"])
        return self


def _random_system(draw) -> System:
    from hypothesis import strategies as st
    n = draw(st.integers(2, 5))
    nodes: dict = {"data": GaussianSource(variances=[1.0, 2.0, 3.0],
                                          weights={f"t{i}": [1.0, -1.0 + i, 0.5 * i] for i in range(3)},
                                          noise={"t0": 0.3, "t1": 0.3, "t2": 0.3},
                                          sizes={"train": 40, "test": 30}, data_seed=0)}
    for i in range(n):
        ups = ["data.x"] + [f"m{j}.pred" for j in range(i)]
        chosen = draw(st.lists(st.sampled_from(ups), min_size=1, max_size=3, unique=True))
        nodes[f"m{i}"] = NodeSpec(Lin(alpha=draw(st.sampled_from([0.1, 1.0, 10.0]))),
                                  inputs={f"in{k}": ref for k, ref in enumerate(chosen)},
                                  targets={"y": f"data.t{draw(st.integers(0, 2))}"}, output=True)
    return System(nodes)


CORRUPTIONS = ("flip_byte", "truncate", "delete_file", "garbage_meta", "orphan", "delete_entry",
               "leftover_tmp")


def _corrupt(store: Store, draw) -> None:
    from hypothesis import strategies as st
    folders = [p for _, p in store.folders()]
    if not folders:
        return
    folder = draw(st.sampled_from(folders))
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    kind = draw(st.sampled_from(CORRUPTIONS))
    if kind == "delete_entry":
        shutil.rmtree(folder)
    elif kind == "orphan":
        (folder / "meta.json").unlink(missing_ok=True)
    elif kind == "garbage_meta":
        (folder / "meta.json").write_bytes(b"\x00garbage")
    elif kind == "leftover_tmp":
        (store.root / "tmp" / f"{folder.name}.dead").mkdir(parents=True, exist_ok=True)
    elif files:
        path = draw(st.sampled_from(files))
        data = bytearray(path.read_bytes())
        if kind == "delete_file":
            path.unlink()
        elif kind == "truncate":   # positions as fractions: file sizes vary (timestamps in meta)
            path.write_bytes(bytes(data[:int(draw(st.floats(0, 1, exclude_max=True)) * len(data))]))
        elif data:
            at = int(draw(st.floats(0, 1, exclude_max=True)) * len(data))
            data[at] ^= 1 << draw(st.integers(0, 7))
            path.write_bytes(bytes(data))


def test_kills_and_corruption_between_runs_never_change_the_numbers(tmp_path_factory):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def check(data):
        system = _random_system(data.draw)
        seeds = data.draw(st.sampled_from([[0], [0, 1]]))
        base = tmp_path_factory.mktemp("prop")
        Lin.kill_countdown[0] = -1
        clean = _numbers(LocalExecutor().run(system, seeds, Store(base / "clean")))
        root = base / "store"
        for _ in range(data.draw(st.integers(1, 4))):
            if data.draw(st.booleans()):        # a run killed at its k-th fit
                Lin.kill_countdown[0] = data.draw(st.integers(1, 10))
                try:
                    LocalExecutor().run(system, seeds, Store(root))
                except _Killed:
                    pass
                finally:
                    Lin.kill_countdown[0] = -1
            for _ in range(data.draw(st.integers(0, 3))):
                _corrupt(Store(root), data.draw)
        try:
            got = _numbers(LocalExecutor().run(system, seeds, Store(root)))
        except StoreError as err:    # allowed: a clear error naming the entry
            assert "store entry" in str(err), err
            return
        assert got == clean

    check()
