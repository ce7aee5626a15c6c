"""What a node that classifies or regresses one target shares: outputs from the network's raw
scores, the per-sample loss, the metrics and the fitted state beside the weights.

:class:`~entangle.models.mlp_node.MLPNode` and :class:`~entangle.models.convnet.ConvNetNode`
use it, so both nodes' losses and metrics mean the same thing to the decomposition.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from entangle.node import _one_target

TASKS = ("regression", "classification")


class SupervisedHead:
    """Mixin: ``task`` is ``"classification"`` (fitted ``classes_``) or ``"regression"``
    (fitted ``y_mean_``, ``y_scale_``)."""

    task: str

    @property
    def metric(self) -> str:
        return "accuracy" if self.task == "classification" else "mse"

    @property
    def higher_is_better(self) -> bool:
        return self.task == "classification"

    def _outputs(self, out: np.ndarray) -> dict[str, np.ndarray]:
        """``pred`` (and ``proba`` for a classifier) from raw network outputs ``(N, k)``."""
        if self.task == "classification":
            z = out - out.max(axis=1, keepdims=True)
            proba = np.exp(z)
            proba /= proba.sum(axis=1, keepdims=True)                  # (N, classes)
            return {"pred": self.classes_[proba.argmax(axis=1)], "proba": proba}
        pred = out * self.y_scale_ + self.y_mean_
        return {"pred": pred[:, 0] if pred.shape[1] == 1 else pred}

    def loss(self, predictions: Mapping[str, Any], targets: Mapping[str, Any]) -> np.ndarray:
        """Per sample: log loss (a class unseen in training costs log 1e12), or the squared
        error summed over target columns."""
        y = np.asarray(_one_target(targets, type(self).__name__))
        if self.task == "classification":
            idx = np.clip(np.searchsorted(self.classes_, y), 0, len(self.classes_) - 1)
            known = self.classes_[idx] == y
            p = np.asarray(predictions["proba"])[np.arange(len(y)), idx]
            return -np.log(np.clip(np.where(known, p, 0.0), 1e-12, 1.0))
        d = np.asarray(predictions["pred"], dtype=np.float64).reshape(len(y), -1) - \
            np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        return (d ** 2).sum(axis=1)

    def score(self, predictions: Mapping[str, Any], targets: Mapping[str, Any]) -> dict[str, float]:
        """``accuracy`` and ``log_loss`` of a classifier (plus :meth:`_extra_scores`), ``mse`` of a
        regression."""
        y = np.asarray(_one_target(targets, type(self).__name__))
        per = self.loss(predictions, targets)
        if self.task == "classification":
            return {"accuracy": float(np.mean(np.asarray(predictions["pred"]) == y)),
                    "log_loss": float(np.mean(per)), **self._extra_scores(predictions, y)}
        return {"mse": float(np.mean(per))}

    def _extra_scores(self, predictions: Mapping[str, Any], y: np.ndarray) -> dict[str, float]:
        return {}

    def _head_state(self) -> dict[str, Any]:
        """The fitted label encoding (classes, or the target's mean and scale)."""
        if self.task == "classification":
            return {"classes_": self.classes_}
        return {"y_mean_": self.y_mean_, "y_scale_": self.y_scale_}

    def _restore_attributes(self, state: Mapping[str, Any]) -> None:
        """Set every non-weight entry of ``state`` back as an attribute (0-d arrays as scalars)."""
        for k, v in state.items():
            if not k.startswith("module."):
                v = np.asarray(v)
                setattr(self, k, v.item() if v.ndim == 0 else v)
