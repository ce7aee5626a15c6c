"""The node protocol every model and data source implements, and adapters for common kinds.

This module sits at the bottom of the dependency order (it imports nothing else from
``entangle`` at module level), so every other module can depend on it without cycles;
:meth:`TorchNode.fit` reaches the training loop (:mod:`entangle.training`) when it runs, as it
reaches torch, so that importing the protocol stays light.

A node is a scikit-learn style object: hyperparameters are keyword arguments of ``__init__``
stored unchanged (``get_params`` is the single source for hashing, cloning and configs),
``fit`` returns ``self`` and fitted state ends in ``_``. Wiring (which upstream output feeds
which input) lives in the :class:`~entangle.system.System`, not in the node.

Values passed between nodes are numpy arrays whose first axis is the sample, or
:class:`Ragged` arrays (a variable number of rows per sample: point clouds, boxes).
"""

from __future__ import annotations

import copy
import inspect
import logging
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping

import numpy as np

log = logging.getLogger(__name__)

#: The kind that matches every other kind when the system checks its wiring.
ANY = "any"


class NotFittedError(RuntimeError):
    """Raised when ``predict`` is called on a node that was not fitted."""


class NodeError(RuntimeError):
    """Raised when a node fails while fitting or predicting; the message names node and seed."""


@dataclass(frozen=True, eq=False)
class Ragged:
    """A batch of variable-length rows: sample ``i`` is ``values[offsets[i]:offsets[i+1]]``.

    Point clouds and per-image box lists are ragged: one array of rows with offsets, so they
    store as two plain arrays (no pickling) and slice without copies.
    """

    values: np.ndarray
    offsets: np.ndarray

    def __post_init__(self) -> None:
        off = np.asarray(self.offsets)
        if off.ndim != 1 or off.size < 1 or off[0] != 0 or np.any(np.diff(off) < 0):
            raise ValueError("Ragged offsets must be 1-D, start at 0 and be non-decreasing")
        if off[-1] != len(self.values):
            raise ValueError(
                f"Ragged offsets end at {off[-1]} but there are {len(self.values)} rows"
            )

    @classmethod
    def from_list(cls, rows: list[np.ndarray], width: int | None = None,
                  dtype: Any = np.float32) -> "Ragged":
        """Build from one array of rows per sample (``width`` fixes the column count of empties)."""
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        nonempty = [np.asarray(r, dtype=dtype) for r in rows if len(r)]
        if nonempty:
            values = np.concatenate(nonempty, axis=0)
        else:
            values = np.zeros((0,) if width is None else (0, width), dtype=dtype)
        return cls(values, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i]:self.offsets[i + 1]]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def take(self, index: np.ndarray) -> "Ragged":
        """The samples at ``index``, as a new Ragged."""
        return Ragged.from_list([self[int(i)] for i in np.asarray(index)],
                                width=self.values.shape[1] if self.values.ndim > 1 else None,
                                dtype=self.values.dtype)


def n_samples(value: Any) -> int:
    """Number of samples in a node value (first axis of an array, rows of a Ragged)."""
    return len(value)


def take(value: Any, index: np.ndarray) -> Any:
    """Select samples of a node value (array or Ragged)."""
    if isinstance(value, Ragged):
        return value.take(index)
    return np.asarray(value)[index]


class BaseNode:
    """Base class for every node: scikit-learn style parameters plus the entangle contract.

    Subclasses declare the *kinds* of their named inputs, targets and outputs (free strings such
    as ``"image"``, ``"depth"``, ``"points"``; ``"any"`` matches all) so that the system can check
    wiring before anything runs, and the name of their primary metric.
    """

    #: kinds of the named inputs ``fit``/``predict`` read.
    input_kinds: ClassVar[dict[str, str]] = {}
    #: kinds of the named targets ``fit``/``loss``/``score`` read (ground truth).
    target_kinds: ClassVar[dict[str, str]] = {}
    #: kinds of the named outputs ``predict`` returns.
    output_kinds: ClassVar[dict[str, str]] = {}
    #: name of the primary metric in ``score``'s result, and its direction.
    metric: ClassVar[str] = "loss"
    higher_is_better: ClassVar[bool] = False
    #: explicit code version, part of the cache key beside the source the node runs: raise it
    #: when behaviour changes outside any source file (a data file, a compiled extension).
    version: ClassVar[str | None] = None
    #: parameters that change how, not what, the node computes (worker processes, device,
    #: progress output): left out of the cache key, so the same fit is never done twice.
    execution_params: ClassVar[tuple[str, ...]] = ()

    # -- parameters (scikit-learn's get_params/set_params/clone contract) --------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        names = []
        for p in sig.parameters.values():
            if p.name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            names.append(p.name)
        return sorted(names)

    def get_params(self) -> dict[str, Any]:
        """Hyperparameters as given to ``__init__``: the node's spec for hashing and cloning."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> "BaseNode":
        valid = set(self._param_names())
        for k, v in params.items():
            if k not in valid:
                raise ValueError(f"{type(self).__name__} has no parameter {k!r}; valid: {sorted(valid)}")
            setattr(self, k, v)
        return self

    def clone(self) -> "BaseNode":
        """An unfitted copy with the same parameters."""
        return type(self)(**copy.deepcopy(self.get_params()))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- the contract ----------------------------------------------------------------------
    @property
    def is_source(self) -> bool:
        return False

    def fit(self, inputs: Mapping[str, Any], targets: Mapping[str, Any], *, seed: int) -> "BaseNode":
        """Fit on named inputs and targets of the fit split; the seed fixes init and order."""
        raise NotImplementedError

    def predict(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Named outputs for named inputs (one row per sample)."""
        raise NotImplementedError

    def loss(self, predictions: Mapping[str, Any], targets: Mapping[str, Any]) -> np.ndarray:
        """Per-sample loss: the node's own objective, one number per sample."""
        raise NotImplementedError

    def loss_items(self, targets: Mapping[str, Any]) -> int | None:
        """How many values ``loss`` returns for ``targets``; None (the default): one per sample.

        A node whose items are not its samples says how many it has (a detector's items are the
        ground-truth objects of its class), so the executor can check every loss is there.
        """
        return None

    def score(self, predictions: Mapping[str, Any], targets: Mapping[str, Any]) -> dict[str, float]:
        """Named metrics on a split; must hold ``self.metric``. Default: the mean per-sample loss."""
        return {"loss": float(np.mean(self.loss(predictions, targets)))}

    def state_dict(self) -> dict[str, Any]:
        """Fitted state as arrays/tensors/JSON scalars (never pickled objects)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> "BaseNode":
        """Restore fitted state produced by ``state_dict``; returns self."""
        return self

    def check_is_fitted(self) -> None:
        if not any(k.endswith("_") and not k.startswith("__") for k in vars(self)):
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit first")


class Source(BaseNode):
    """A data source: no inputs; ``load(split, seed)`` returns named outputs for that split.

    Its outputs are inputs and targets of the models below it. A source whose data does not
    depend on the seed should ignore it; its ``get_params`` still enters every cache key below.
    """

    @property
    def uses_seed(self) -> bool:
        """Whether ``load`` depends on the study's seed (True: its seeds also resample the data).

        By default a source with a ``data_seed`` parameter uses the study's seed only when
        ``data_seed`` is None (a fixed one gives the same data, so one key, for every seed); a
        source without one uses it. Sources whose data never (or always) depend on the seed set
        ``uses_seed = False`` (or True) as a class attribute.
        """
        return getattr(self, "data_seed", None) is None

    @property
    def is_source(self) -> bool:
        return True

    def load(self, split: str, seed: int) -> dict[str, Any]:
        raise NotImplementedError

    def fit(self, inputs, targets, *, seed):  # noqa: D102 - sources are not fitted
        return self

    def predict(self, inputs):  # noqa: D102
        raise TypeError(f"{type(self).__name__} is a source: use load(split, seed)")

    def check_is_fitted(self) -> None:
        return None


def _stack_inputs(inputs: Mapping[str, Any]) -> np.ndarray:
    """Concatenate named 1-D/2-D inputs, sorted by name, into one feature matrix."""
    cols = []
    for name in sorted(inputs):
        a = np.asarray(inputs[name], dtype=np.float64)
        cols.append(a.reshape(len(a), -1))
    return np.concatenate(cols, axis=1)


def _one_target(targets: Mapping[str, Any], owner: str) -> np.ndarray:
    if len(targets) != 1:
        raise ValueError(f"{owner} takes exactly one target, got {sorted(targets)}")
    return np.asarray(next(iter(targets.values())))


class SklearnNode(BaseNode):
    """Wraps a scikit-learn estimator: inputs are concatenated (sorted by name) into features.

    Classifiers output ``pred`` (labels) and ``proba``; regressors output ``pred``. The per-sample
    loss is the log loss (classifiers) or squared error (regressors); the metric is accuracy or
    mean squared error. Fitted state is serialised with skops (no pickle), and loading refuses
    any type outside scikit-learn, numpy and scipy.
    """

    input_kinds = {}  # any named inputs, checked dynamically
    target_kinds = {"y": ANY}
    output_kinds = {"pred": "array", "proba": "array"}
    version = "1"

    def __init__(self, *, estimator: Any, task: str = "auto", seed_param: str | None = "random_state"):
        self.estimator = estimator
        self.task = task
        self.seed_param = seed_param

    @property
    def is_classifier(self) -> bool:
        if self.task != "auto":
            return self.task == "classifier"
        from sklearn.base import is_classifier
        return is_classifier(self.estimator)

    @property
    def metric(self) -> str:  # type: ignore[override]
        return "accuracy" if self.is_classifier else "mse"

    @property
    def higher_is_better(self) -> bool:  # type: ignore[override]
        return self.is_classifier

    def fit(self, inputs, targets, *, seed):
        from sklearn.base import clone
        est = clone(self.estimator)
        if self.seed_param and self.seed_param in est.get_params():
            est.set_params(**{self.seed_param: seed})
        est.fit(_stack_inputs(inputs), _one_target(targets, type(self).__name__))
        self.estimator_ = est
        return self

    def predict(self, inputs):
        if not hasattr(self, "estimator_"):
            raise NotFittedError("SklearnNode is not fitted")
        X = _stack_inputs(inputs)
        out = {"pred": self.estimator_.predict(X)}
        if self.is_classifier and hasattr(self.estimator_, "predict_proba"):
            out["proba"] = self.estimator_.predict_proba(X).astype(np.float64)
        return out

    def loss(self, predictions, targets):
        y = _one_target(targets, type(self).__name__)
        if self.is_classifier and "proba" in predictions:
            classes = list(self.estimator_.classes_)
            idx = np.searchsorted(np.asarray(classes), y)
            p = np.asarray(predictions["proba"])[np.arange(len(y)), idx]
            return -np.log(np.clip(p, 1e-12, 1.0))
        if self.is_classifier:
            return (np.asarray(predictions["pred"]) != y).astype(np.float64)
        return (np.asarray(predictions["pred"], dtype=np.float64).reshape(len(y), -1)
                - y.reshape(len(y), -1)).__pow__(2).sum(axis=1)

    def score(self, predictions, targets):
        y = _one_target(targets, type(self).__name__)
        per = self.loss(predictions, targets)
        if self.is_classifier:
            return {"accuracy": float(np.mean(np.asarray(predictions["pred"]) == y)),
                    "log_loss": float(np.mean(per))}
        return {"mse": float(np.mean(per))}

    def state_dict(self):
        # skops serialises estimators without pickle; loading audits every type it would create.
        import skops.io as sio
        return {"skops": np.frombuffer(sio.dumps(self.estimator_), dtype=np.uint8).copy()}

    def load_state_dict(self, state):
        import skops.io as sio
        blob = np.asarray(state["skops"], dtype=np.uint8).tobytes()
        untrusted = sio.get_untrusted_types(data=blob)
        foreign = [t for t in untrusted if not t.startswith(("sklearn.", "numpy.", "scipy."))]
        if foreign:
            raise TypeError(f"refusing to load a stored estimator that would create {foreign}: "
                            "only scikit-learn, numpy and scipy types are loaded")
        self.estimator_ = sio.loads(blob, trusted=untrusted)
        return self


class FunctionNode(BaseNode):
    """A non-learned node: ``fn(**inputs) -> dict of outputs`` (or one array, named ``out``).

    Use it for classical algorithms (OpenCV stereo, pseudo-LiDAR conversion). ``fit`` only marks
    the node fitted; ``kwargs`` are extra keyword arguments of ``fn`` and enter the cache key.
    """

    metric = "loss"
    version = "1"

    def __init__(self, *, fn: Callable[..., Any], kwargs: dict[str, Any] | None = None,
                 outputs: tuple[str, ...] = ("out",)):
        self.fn = fn
        self.kwargs = kwargs
        self.outputs = outputs

    @property
    def output_kinds(self) -> dict[str, str]:  # type: ignore[override]
        return {o: ANY for o in self.outputs}

    def fit(self, inputs, targets, *, seed):
        self.fitted_ = True
        return self

    def predict(self, inputs):
        result = self.fn(**dict(inputs), **dict(self.kwargs or {}))
        if not isinstance(result, dict):
            result = {self.outputs[0]: result}
        missing = set(self.outputs) - set(result)
        if missing:
            raise ValueError(f"{getattr(self.fn, '__qualname__', self.fn)} did not return {sorted(missing)}")
        return result

    def loss(self, predictions, targets):
        return np.zeros(n_samples(next(iter(predictions.values()))))

    def state_dict(self):
        return {"fitted_": True}

    def load_state_dict(self, state):
        self.fitted_ = True
        return self


class TorchNode(BaseNode):
    """Wraps a torch module factory and a loss: minibatch Adam training (:func:`entangle.training.train`).

    ``module`` is a factory (Hydra ``_partial_: true`` or a class) called after seeding, so the
    seed fixes initialisation; inputs are concatenated (sorted by name) into one float tensor.
    ``criterion`` is ``"mse"`` or ``"cross_entropy"``. Outputs ``pred`` (and ``proba`` for
    cross-entropy). Runs on CUDA when present unless ``device`` says otherwise.

    ``checkpoints=K`` keeps the weights of the last ``K`` epochs (the last one is the final
    model) and adds outputs ``ckpt_pred`` ``(N, K)``, each checkpoint's predicted label (or
    value), and for cross-entropy ``ckpt_logit`` ``(N, K, classes)``. Being outputs, they are
    stored for every split and recomputed under :meth:`~entangle.executor.Run.predict_with`, so
    per-sample instability across the checkpoints of one run is read without retraining.
    Subclasses change what is fitted by overriding :meth:`_objective`.
    """

    target_kinds = {"y": ANY}
    version = "1"
    execution_params = ("device",)

    def __init__(self, *, module: Callable[[], Any], criterion: str = "mse", epochs: int = 20,
                 lr: float = 1e-2, batch_size: int = 128, weight_decay: float = 0.0,
                 device: str = "auto", checkpoints: int = 0):
        self.module = module
        self.criterion = criterion
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.device = device
        self.checkpoints = checkpoints
        if isinstance(checkpoints, bool) or not isinstance(checkpoints, int) or checkpoints < 0:
            raise ValueError(f"TorchNode checkpoints must be an int >= 0 (epochs whose weights are "
                             f"kept), got {checkpoints!r}")

    @property
    def output_kinds(self) -> dict[str, str]:  # type: ignore[override]
        kinds = {"pred": "array", "proba": "array"}
        if self.checkpoints:
            kinds["ckpt_pred"] = "array"
            if self.criterion == "cross_entropy":
                kinds["ckpt_logit"] = "array"
        return kinds

    @property
    def metric(self) -> str:  # type: ignore[override]
        return "accuracy" if self.criterion == "cross_entropy" else "mse"

    @property
    def higher_is_better(self) -> bool:  # type: ignore[override]
        return self.criterion == "cross_entropy"

    def _objective(self, targets: Mapping[str, Any]):
        """Training targets (one row per sample) and the batch loss ``crit(output, rows)``."""
        import torch
        y_np = _one_target(targets, type(self).__name__)
        if self.criterion == "cross_entropy":
            return torch.as_tensor(y_np, dtype=torch.long), torch.nn.functional.cross_entropy
        if self.criterion == "mse":
            y = torch.as_tensor(y_np, dtype=torch.float32).reshape(len(y_np), -1)
            return y, torch.nn.functional.mse_loss
        raise ValueError(f"TorchNode criterion must be 'mse' or 'cross_entropy', got {self.criterion!r}")

    def fit(self, inputs, targets, *, seed):
        import torch

        # imported here, as torch is: importing the protocol must not import torch
        from entangle.training import resolve_device, train
        torch.manual_seed(seed)
        dev = resolve_device(self.device)
        X = torch.as_tensor(_stack_inputs(inputs), dtype=torch.float32)
        y, crit = self._objective(targets)
        if len(y) != len(X):
            raise ValueError(f"{type(self).__name__}: {len(X)} input rows but {len(y)} target rows")
        net = self.module()

        def batch_loss(net, idx, step):
            return crit(net(X[idx].to(dev)), y[idx].to(dev))

        trained = train(net, batch_loss, epochs=self.epochs, n=len(X), batch_size=self.batch_size,
                        seed=seed, lr=self.lr, weight_decay=self.weight_decay,
                        keep_last=min(int(self.checkpoints), int(self.epochs)), device=dev,
                        name=type(self).__name__)
        self.module_ = trained.module
        self.checkpoints_ = trained.checkpoints
        self._ckpt_nets = None
        return self

    def _checkpoint_nets(self) -> list:
        """The kept checkpoints as eval-mode modules (built once, on CPU)."""
        if getattr(self, "_ckpt_nets", None) is None:
            nets = []
            for state in getattr(self, "checkpoints_", []):
                net = self.module()
                net.load_state_dict(state)
                nets.append(net.eval())
            self._ckpt_nets = nets
        return self._ckpt_nets

    def predict(self, inputs):
        import torch
        if not hasattr(self, "module_"):
            raise NotFittedError("TorchNode is not fitted")
        X = torch.as_tensor(_stack_inputs(inputs), dtype=torch.float32)
        with torch.no_grad():
            out = self.module_(X)
            ckpt = [net(X) for net in self._checkpoint_nets()] if self.checkpoints else []
        result: dict[str, Any] = {}
        if self.criterion == "cross_entropy":
            proba = torch.softmax(out, dim=1).numpy().astype(np.float64)
            result = {"pred": proba.argmax(axis=1), "proba": proba}
        else:
            out = out.numpy().astype(np.float64)
            result = {"pred": out[:, 0] if out.shape[1] == 1 else out}
        if self.checkpoints:
            stacked = torch.stack(ckpt, dim=1).numpy()  # (N, K, outputs)
            if self.criterion == "cross_entropy":
                result["ckpt_pred"] = stacked.argmax(axis=2)
                result["ckpt_logit"] = stacked.astype(np.float32)
            else:
                stacked = stacked.astype(np.float64)
                result["ckpt_pred"] = stacked[:, :, 0] if stacked.shape[2] == 1 else stacked
        return result

    def loss(self, predictions, targets):
        y = _one_target(targets, type(self).__name__)
        if self.criterion == "cross_entropy":
            p = np.asarray(predictions["proba"])[np.arange(len(y)), y.astype(int)]
            return -np.log(np.clip(p, 1e-12, 1.0))
        d = np.asarray(predictions["pred"], dtype=np.float64).reshape(len(y), -1) - y.reshape(len(y), -1)
        return (d ** 2).mean(axis=1)

    def score(self, predictions, targets):
        y = _one_target(targets, type(self).__name__)
        per = self.loss(predictions, targets)
        if self.criterion == "cross_entropy":
            return {"accuracy": float(np.mean(np.asarray(predictions["pred"]) == y)),
                    "log_loss": float(np.mean(per))}
        return {"mse": float(np.mean(per))}

    def state_dict(self):
        state = {f"module.{k}": v.detach().cpu() for k, v in self.module_.state_dict().items()}
        for j, snap in enumerate(getattr(self, "checkpoints_", [])):
            state.update({f"ckpt.{j}.{k}": v for k, v in snap.items()})
        return state

    def load_state_dict(self, state):
        net = self.module()
        net.load_state_dict({k[len("module."):]: v for k, v in state.items() if k.startswith("module.")})
        self.module_ = net.eval()
        snaps: dict[int, dict[str, Any]] = {}
        for k, v in state.items():
            if k.startswith("ckpt."):
                j, name = k[len("ckpt."):].split(".", 1)
                snaps.setdefault(int(j), {})[name] = v
        if self.checkpoints and not snaps:
            raise ValueError(f"{type(self).__name__}(checkpoints={self.checkpoints}): the stored "
                             "state holds no checkpoint weights")
        self.checkpoints_ = [snaps[j] for j in sorted(snaps)]
        self._ckpt_nets = None
        return self
