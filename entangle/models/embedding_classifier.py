"""A small MLP classifier that also outputs its embedding, for failure discovery and fine-tuning.

Failure directions are fitted in a model's own embedding (its last hidden layer, output
``feat``); misclassification-region fine-tuning needs the torch module itself
(:meth:`EmbeddingClassifier.logits`, :meth:`EmbeddingClassifier.with_module`).
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Sequence

import numpy as np

from entangle.node import ANY, BaseNode, NotFittedError, _one_target, _stack_inputs

log = logging.getLogger(__name__)


def build_mlp(in_features: int, hidden: Sequence[int], n_classes: int):
    """The classifier's network: an :class:`~entangle.models.mlp.MLP` returning ``(logits, feat)``."""
    from entangle.models.mlp import MLP
    return MLP(in_features, list(hidden), n_classes, with_features=True)


class EmbeddingClassifier(BaseNode):
    """MLP classifier on standardized inputs; outputs ``pred``, ``proba`` and the embedding ``feat``.

    Classes are ``0 .. n_classes-1`` (fixed, so a fine-tuned or reweighted model keeps its
    output layout). Trained with Adam on minibatches for ``epochs`` epochs
    (:func:`entangle.training.train`); the seed fixes the initialisation and the batch order.
    The per-sample loss is the log loss.
    """

    target_kinds = {"y": ANY}
    output_kinds = {"pred": "array", "proba": "array", "feat": "array"}
    metric = "accuracy"
    higher_is_better = True
    version = "1"

    def __init__(self, *, n_classes: int = 10, hidden: Sequence[int] = (128, 64), epochs: int = 30,
                 lr: float = 3e-3, batch_size: int = 128, weight_decay: float = 1e-4):
        self.n_classes = n_classes
        self.hidden = hidden
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        if int(n_classes) < 2:
            raise ValueError(f"EmbeddingClassifier n_classes must be >= 2, got {n_classes}")

    # -- torch helpers used by fine-tuning ------------------------------------------------------
    def tensor(self, X: np.ndarray):
        """Standardized float tensor of a raw feature matrix (n, d)."""
        import torch
        return torch.as_tensor((np.asarray(X, dtype=np.float64) - self.x_mean_) / self.x_scale_,
                               dtype=torch.float32)

    def logits(self, X: np.ndarray):
        """Logits (n, classes) of a raw feature matrix, as a tensor with gradients."""
        return self.module_(self.tensor(X))[0]

    def with_module(self, module) -> "EmbeddingClassifier":
        """A fitted copy of this node whose network is ``module`` (e.g. after fine-tuning)."""
        new = copy.copy(self)
        new.module_ = module.eval()
        return new

    # -- the node contract --------------------------------------------------------------------
    def fit(self, inputs, targets, *, seed):
        import torch

        from entangle.training import train
        torch.manual_seed(seed)
        X = _stack_inputs(inputs)                                   # (n, d)
        y = np.asarray(_one_target(targets, type(self).__name__)).astype(np.int64)
        if y.min() < 0 or y.max() >= self.n_classes:
            raise ValueError(f"EmbeddingClassifier labels must lie in 0..{self.n_classes - 1}, "
                             f"got {y.min()}..{y.max()}")
        self.x_mean_ = X.mean(axis=0)
        std = X.std(axis=0)
        self.x_scale_ = np.where(std > 1e-12, std, 1.0)
        Xt = self.tensor(X)
        yt = torch.as_tensor(y, dtype=torch.long)
        net = build_mlp(X.shape[1], list(self.hidden), int(self.n_classes))

        def batch_loss(net, idx, step):
            return torch.nn.functional.cross_entropy(net(Xt[idx])[0], yt[idx])

        trained = train(net, batch_loss, epochs=int(self.epochs), n=len(Xt),
                        batch_size=int(self.batch_size), seed=seed, lr=self.lr,
                        weight_decay=self.weight_decay, name=type(self).__name__)
        self.module_ = trained.module
        self.in_features_ = int(X.shape[1])
        return self

    def predict(self, inputs):
        import torch
        if not hasattr(self, "module_"):
            raise NotFittedError("EmbeddingClassifier is not fitted")
        X = _stack_inputs(inputs)
        if X.shape[1] != self.in_features_:
            raise ValueError(f"EmbeddingClassifier was fitted on {self.in_features_} input columns, "
                             f"got {X.shape[1]}")
        with torch.no_grad():
            logits, feat = self.module_(self.tensor(X))
            proba = torch.softmax(logits, dim=1).numpy().astype(np.float64)
        return {"pred": proba.argmax(axis=1), "proba": proba, "feat": feat.numpy().astype(np.float64)}

    def loss(self, predictions, targets):
        y = np.asarray(_one_target(targets, type(self).__name__)).astype(np.int64)
        p = np.asarray(predictions["proba"])[np.arange(len(y)), y]
        return -np.log(np.clip(p, 1e-12, 1.0))

    def score(self, predictions, targets):
        y = np.asarray(_one_target(targets, type(self).__name__))
        return {"accuracy": float(np.mean(np.asarray(predictions["pred"]) == y)),
                "log_loss": float(np.mean(self.loss(predictions, targets)))}

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {f"module.{k}": v.detach().cpu() for k, v in self.module_.state_dict().items()}
        state.update({"x_mean_": self.x_mean_, "x_scale_": self.x_scale_,
                      "in_features_": np.asarray(self.in_features_)})
        return state

    def load_state_dict(self, state):
        self.x_mean_ = np.asarray(state["x_mean_"], dtype=np.float64)
        self.x_scale_ = np.asarray(state["x_scale_"], dtype=np.float64)
        self.in_features_ = int(np.asarray(state["in_features_"]))
        net = build_mlp(self.in_features_, list(self.hidden), int(self.n_classes))
        net.load_state_dict({k[len("module."):]: v for k, v in state.items() if k.startswith("module.")})
        self.module_ = net.eval()
        return self
