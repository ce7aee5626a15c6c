"""A multilayer-perceptron node: the decomposition's high-capacity reference learner, and a
small feature-extracting network for the digits toys.

Unlike :class:`~entangle.node.TorchNode` it infers its input width when it is fitted (a reference
learner reads whatever representation it is wired to), standardizes inputs (and regression
targets), keeps a validation share for early stopping, and also outputs its last hidden layer as
``feat`` so a downstream node can read an upstream network's features.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from entangle.models.heads import TASKS, SupervisedHead
from entangle.node import BaseNode, NotFittedError, _one_target, _stack_inputs

log = logging.getLogger(__name__)



def _build(in_features: int, hidden: Sequence[int], out_features: int, skip: bool):
    """The node's network: an :class:`~entangle.models.mlp.MLP` that also returns ``feat``."""
    from entangle.models.mlp import MLP
    return MLP(in_features, list(hidden), out_features, skip=skip, with_features=True)


class MLPNode(SupervisedHead, BaseNode):
    """An MLP on standardized inputs, trained with Adam and early stopping on a held-out share.

    Parameters
    ----------
    task : ``"regression"`` (squared error, output ``pred``) or ``"classification"``
        (cross-entropy; outputs ``pred`` labels and ``proba`` over the classes seen in training).
    hidden : widths of the hidden layers (empty: a linear or logistic model).
    epochs, lr, batch_size, weight_decay : Adam training (:func:`entangle.training.train`); the
        learning rate decays by cosine.
    val_fraction : share of the fit data held out for early stopping (0 disables it); the
        weights of the best validation epoch are kept.
    patience : epochs without a better validation loss before training stops.
    skip : add a linear path from input to output (the class then contains every linear model).
    subsample : fit on the first ``subsample`` share of the fit split, in the source's order (the
        "more training data" knob of the paper's toys: a source can order clean samples first).
    device : ``"cpu"``, ``"cuda"`` or ``"auto"``.

    The per-sample loss is the squared error summed over target columns (regression; the same
    as :class:`~entangle.node.SklearnNode`'s) or the log loss (classification), so the decomposition
    can compare it with a downstream node's own loss.
    """

    target_kinds = {"y": "any"}
    version = "1"
    execution_params = ("device",)

    def __init__(self, *, task: str = "regression", hidden: Sequence[int] = (128, 128),
                 epochs: int = 60, lr: float = 3e-3, batch_size: int = 256,
                 weight_decay: float = 0.0, val_fraction: float = 0.1, patience: int = 10,
                 skip: bool = True, subsample: float = 1.0, device: str = "cpu"):
        self.task = task
        self.hidden = hidden
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.val_fraction = val_fraction
        self.patience = patience
        self.skip = skip
        self.subsample = subsample
        self.device = device
        if task not in TASKS:
            raise ValueError(f"MLPNode task must be one of {TASKS}, got {task!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"MLPNode val_fraction must lie in [0, 1), got {val_fraction}")
        if not 0.0 < subsample <= 1.0:
            raise ValueError(f"MLPNode subsample must lie in (0, 1], got {subsample}")

    # -- protocol properties ------------------------------------------------------------------
    @property
    def output_kinds(self) -> dict[str, str]:  # type: ignore[override]
        out = {"pred": "array", "feat": "array"}
        if self.task == "classification":
            out["proba"] = "array"
        return out

    # -- fitting ------------------------------------------------------------------------------
    def fit(self, inputs, targets, *, seed):
        import torch

        from entangle.training import resolve_device, train
        torch.manual_seed(seed)
        X = _stack_inputs(inputs)                                   # (n, d)
        y = _one_target(targets, type(self).__name__)
        if self.subsample < 1.0:
            keep = max(2, int(round(self.subsample * len(X))))
            X, y = X[:keep], np.asarray(y)[:keep]
        n = len(X)
        self.x_mean_ = X.mean(axis=0)
        self.x_scale_ = np.where(X.std(axis=0) > 1e-12, X.std(axis=0), 1.0)
        Xs = (X - self.x_mean_) / self.x_scale_
        if self.task == "classification":
            self.classes_, y_idx = np.unique(y, return_inverse=True)
            out_features = len(self.classes_)
            yt = torch.as_tensor(y_idx, dtype=torch.long)
            crit = torch.nn.functional.cross_entropy
        else:
            Y = np.asarray(y, dtype=np.float64).reshape(n, -1)     # (n, k)
            self.y_mean_ = Y.mean(axis=0)
            self.y_scale_ = np.where(Y.std(axis=0) > 1e-12, Y.std(axis=0), 1.0)
            out_features = Y.shape[1]
            yt = torch.as_tensor((Y - self.y_mean_) / self.y_scale_, dtype=torch.float32)
            crit = torch.nn.functional.mse_loss
        Xt = torch.as_tensor(Xs, dtype=torch.float32)
        rng = np.random.default_rng(seed)
        order = rng.permutation(n)
        n_val = int(round(self.val_fraction * n)) if self.val_fraction > 0 else 0
        if n_val and n - n_val < 2:
            n_val = 0
        val_idx, train_idx = order[:n_val], order[n_val:]
        dev = resolve_device(self.device)
        net = _build(Xs.shape[1], list(self.hidden), out_features, bool(self.skip))
        Xtr, ytr = Xt[train_idx].to(dev), yt[train_idx].to(dev)
        Xva, yva = Xt[val_idx].to(dev), yt[val_idx].to(dev)

        def batch_loss(net, idx, step):
            idx = idx.to(dev)
            return crit(net(Xtr[idx])[0], ytr[idx])

        trained = train(net, batch_loss, epochs=self.epochs, n=len(train_idx),
                        batch_size=self.batch_size, seed=seed, lr=self.lr,
                        weight_decay=self.weight_decay, schedule="cosine", device=dev,
                        validate=(lambda net: crit(net(Xva)[0], yva)) if n_val else None,
                        patience=self.patience, name=type(self).__name__)
        self.module_ = trained.module
        self.epochs_run_ = trained.epochs_run
        self.in_features_ = int(Xs.shape[1])
        self.out_features_ = int(out_features)
        return self

    # -- predicting ---------------------------------------------------------------------------
    def _forward(self, inputs) -> tuple[np.ndarray, np.ndarray]:
        import torch
        if not hasattr(self, "module_"):
            raise NotFittedError("MLPNode is not fitted")
        X = (_stack_inputs(inputs) - self.x_mean_) / self.x_scale_
        if X.shape[1] != self.in_features_:
            raise ValueError(f"MLPNode was fitted on {self.in_features_} input columns, got {X.shape[1]}")
        with torch.no_grad():
            out, feat = self.module_(torch.as_tensor(X, dtype=torch.float32))
        return out.numpy().astype(np.float64), feat.numpy().astype(np.float64)

    def predict(self, inputs):
        out, feat = self._forward(inputs)
        return {**self._outputs(out), "feat": feat}

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {f"module.{k}": v.detach().cpu() for k, v in self.module_.state_dict().items()}
        state.update({"x_mean_": self.x_mean_, "x_scale_": self.x_scale_,
                      "in_features_": self.in_features_, "out_features_": self.out_features_,
                      "epochs_run_": self.epochs_run_, **self._head_state()})
        return state

    def load_state_dict(self, state):
        self._restore_attributes(state)
        net = _build(int(self.in_features_), list(self.hidden), int(self.out_features_), bool(self.skip))
        net.load_state_dict({k[len("module."):]: v for k, v in state.items() if k.startswith("module.")})
        self.module_ = net.eval()
        return self
