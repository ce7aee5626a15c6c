"""The small ConvNet of the paper's illustrative experiments, as a node of a system.

Wu et al.'s SVHN experiments use a two-block ConvNet (5x5 convolutions, batch norm, max-pooling)
whose head is a linear layer or an MLP; a downstream model reads either its prediction or its
*features*, the flattened output of the convolutional trunk (the head's input). It trains with
Adam, the learning rate times 0.1 at 50 % and 75 % of the run, keeping the weights that were
best on a validation set (:func:`entangle.training.train`).

The run is a fixed number of optimizer steps, whatever the training set's size: the paper's
fixed 200-500 epochs train even its smallest subsets to convergence, which a CPU budget cannot
afford for the largest; a fixed epoch count would leave a 10 % subset with a dozen steps, so
"more data" would also mean "more training". The steps are cut into ``evals`` rounds (the
schedule's "epochs"), each ending with a validation.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from entangle.models.mlp import MLP
from entangle.models.heads import TASKS, SupervisedHead
from entangle.node import BaseNode, NotFittedError, _one_target

log = logging.getLogger(__name__)

#: how many rows :meth:`ConvNetNode.predict` pushes through the network at a time
PREDICT_BATCH = 1024
#: queries and references of the nearest-neighbour error at most (the paper's protocol on a split)
KNN_ROWS = 2000


class ConvNet(nn.Module):
    """Two conv blocks (conv 5x5, batch norm, max-pool 2, ReLU) and an MLP head.

    The second convolution has stride 2, so a 32x32 image leaves the trunk as
    ``channels[1] x 4 x 4`` = 512 features at the default widths, as in the paper's ConvNet.
    ``forward`` returns ``(out, feat)``: the head's output and the trunk's flattened features.
    """

    def __init__(self, out_features: int, *, size: int = 32, in_channels: int = 3,
                 channels: Sequence[int] = (32, 32), hidden: Sequence[int] = ()):
        super().__init__()
        c1, c2 = (int(c) for c in channels)
        self.conv1 = nn.Conv2d(in_channels, c1, kernel_size=5, stride=1, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=5, stride=2, padding=2, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        side = ((size // 2) + 1) // 2 // 2  # pool, stride-2 conv (padding 2, kernel 5), pool
        self.feat_dim = c2 * side * side
        self.head = MLP(self.feat_dim, [int(h) for h in hidden], int(out_features))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x: (batch, 3, size, size)
        x = F.relu(F.max_pool2d(self.bn1(self.conv1(x)), 2))  # (batch, c1, size/2, size/2)
        x = F.relu(F.max_pool2d(self.bn2(self.conv2(x)), 2))  # (batch, c2, size/8, size/8)
        feat = x.flatten(1)                                     # (batch, feat_dim)
        return self.head(feat), feat                            # (batch, out), (batch, feat_dim)


def knn_error(feat: np.ndarray, y: np.ndarray, rows: int = KNN_ROWS) -> float:
    """The paper's nearest-neighbour error of features: half of the samples (a fixed permutation)
    are references, the other half queries, each labelled by its cosine-nearest reference.

    At most ``rows`` queries and ``rows`` references are used, so the cost stays bounded.
    """
    n = len(y)
    if n < 2:
        return float("nan")
    order = np.random.default_rng(0).permutation(n)
    half = n // 2
    ref, query = order[:half][:rows], order[half:][:rows]
    f = torch.as_tensor(np.asarray(feat, dtype=np.float32))
    f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)            # (n, d) unit rows
    sim = f[torch.as_tensor(query)] @ f[torch.as_tensor(ref)].T      # (queries, references)
    nearest = ref[sim.argmax(dim=1).numpy()]
    return float(np.mean(np.asarray(y)[nearest] != np.asarray(y)[query]))


class ConvNetNode(SupervisedHead, BaseNode):
    """The paper's ConvNet on colour images: a classifier or a regressor, with its features.

    Parameters
    ----------
    task : ``"classification"`` (cross-entropy; outputs ``pred`` labels and ``proba``) or
        ``"regression"`` (squared error on standardized targets; output ``pred``).
    hidden : widths of the head's hidden layers (empty: a linear head, the paper's ``fc1``).
    channels : widths of the two convolutions.
    steps, batch_size, lr, weight_decay : Adam for ``steps`` minibatches of ``batch_size`` rows
        (shuffled passes over the training rows, one after the other); the rate times 0.1 at
        50 % and 75 % of the run.
    evals : validations during the run (the weights of the best one are kept).
    subsample : train on the first ``subsample`` share of the training rows, in the source's
        order (the "more training data" knob: a source can order its rows as it means them).
    features : also output ``feat`` (float32), the trunk's features, for a downstream node.
    device : ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.

    Inputs: ``image`` (N, H, W, 3) float in [0, 1]; optional ``holdout`` (N,) bool or 0/1: the
    rows held out as the validation set (the weights of the round with the lowest validation
    loss are kept; without it, the last round's). Target ``y``. Images are standardized per
    channel with the training rows' mean and sd.
    """

    input_kinds = {"image": "image", "holdout": "array"}
    optional_inputs = ("holdout",)
    target_kinds = {"y": "any"}
    version = "1"
    execution_params = ("device",)

    def __init__(self, *, task: str = "classification", hidden: Sequence[int] = (),
                 channels: Sequence[int] = (32, 32), steps: int = 200, evals: int = 10,
                 lr: float = 1e-3, batch_size: int = 128, weight_decay: float = 0.0,
                 subsample: float = 1.0, features: bool = True, device: str = "auto"):
        self.task = task
        self.hidden = hidden
        self.channels = channels
        self.steps = steps
        self.evals = evals
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.subsample = subsample
        self.features = features
        self.device = device
        if task not in TASKS:
            raise ValueError(f"ConvNetNode task must be one of {TASKS}, got {task!r}")
        if not 0.0 < float(subsample) <= 1.0:
            raise ValueError(f"ConvNetNode subsample must lie in (0, 1], got {subsample}")
        if int(steps) < 1 or not 1 <= int(evals) <= int(steps):
            raise ValueError(f"ConvNetNode needs steps >= 1 and 1 <= evals <= steps, got {steps}, {evals}")
        if len(tuple(channels)) != 2:
            raise ValueError(f"ConvNetNode channels must give the two convolutions' widths, got {channels}")

    # -- protocol properties ----------------------------------------------------------------
    @property
    def output_kinds(self) -> dict[str, str]:  # type: ignore[override]
        out = {"pred": "array"}
        if self.task == "classification":
            out["proba"] = "array"
        if self.features:
            out["feat"] = "array"
        return out

    # -- fitting ----------------------------------------------------------------------------
    def _tensor(self, images: np.ndarray) -> torch.Tensor:
        """Standardized images (N, 3, H, W), channels-last in memory (faster convolutions on CPU)."""
        x = (np.asarray(images, dtype=np.float32) - self.mean_) / self.scale_  # (N, H, W, 3)
        return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)  # (N, 3, H, W) view

    def _build(self, size: int, out_features: int) -> ConvNet:
        return ConvNet(out_features, size=size, channels=tuple(self.channels), hidden=tuple(self.hidden))

    def fit(self, inputs, targets, *, seed):
        from entangle.training import resolve_device, train

        images = np.asarray(inputs["image"])                         # (N, H, W, 3)
        if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
            raise ValueError(f"ConvNetNode reads square colour images (N, H, W, 3), got {images.shape}")
        y = np.asarray(_one_target(targets, type(self).__name__))
        n = len(images)
        held = np.zeros(n, bool) if inputs.get("holdout") is None else np.asarray(inputs["holdout"]).astype(bool)
        val_idx = np.flatnonzero(held)
        pool = np.flatnonzero(~held)
        keep = max(2, int(round(float(self.subsample) * len(pool))))
        train_idx = pool[:keep]                                       # the source's order
        self.mean_ = images[train_idx].mean(axis=(0, 1, 2)).astype(np.float32)           # (3,)
        self.scale_ = np.maximum(images[train_idx].std(axis=(0, 1, 2)), 1e-6).astype(np.float32)
        if self.task == "classification":
            self.classes_, y_idx = np.unique(y, return_inverse=True)
            yt = torch.as_tensor(y_idx, dtype=torch.long)                                # (N,)
            out_features = len(self.classes_)
            crit = F.cross_entropy
        else:
            yv = y.astype(np.float64)
            self.y_mean_ = float(yv[train_idx].mean())
            self.y_scale_ = float(max(yv[train_idx].std(), 1e-12))
            yt = torch.as_tensor((yv - self.y_mean_) / self.y_scale_, dtype=torch.float32)  # (N,)
            out_features = 1

            def crit(out, target):  # out (batch, 1), target (batch,)
                return F.mse_loss(out[:, 0], target)
        dev = resolve_device(self.device)
        torch.manual_seed(seed)
        net = self._build(images.shape[1], out_features).to(memory_format=torch.channels_last)
        X = self._tensor(images)                                       # (N, 3, H, W)
        Xtr = X[torch.as_tensor(train_idx)].contiguous(memory_format=torch.channels_last).to(dev)
        ytr = yt[torch.as_tensor(train_idx)].to(dev)
        Xva = X[torch.as_tensor(val_idx)].contiguous(memory_format=torch.channels_last).to(dev)
        yva = yt[torch.as_tensor(val_idx)].to(dev)

        rounds = int(self.evals)
        per_round = int(self.steps) // rounds
        batch = min(int(self.batch_size), len(train_idx))
        gen = torch.Generator().manual_seed(int(seed))
        queue = {"perm": torch.zeros(0, dtype=torch.long), "pos": 0}

        def batches(round_: int):
            """``per_round`` minibatches of row indices, from shuffled passes one after the other."""
            for _ in range(per_round):
                if queue["pos"] + batch > len(queue["perm"]):
                    parts = [queue["perm"][queue["pos"]:]]
                    while sum(len(p) for p in parts) < batch:
                        parts.append(torch.randperm(len(train_idx), generator=gen))
                    queue["perm"], queue["pos"] = torch.cat(parts), 0
                yield queue["perm"][queue["pos"]:queue["pos"] + batch]
                queue["pos"] += batch

        def batch_loss(net, idx, step):
            idx = idx.to(dev)
            return crit(net(Xtr[idx])[0], ytr[idx])

        def validate(net) -> float:
            total = 0.0
            for start in range(0, len(val_idx), PREDICT_BATCH):
                sl = slice(start, start + PREDICT_BATCH)
                total += float(crit(net(Xva[sl])[0], yva[sl])) * len(yva[sl])
            return total / len(val_idx)

        trained = train(net, batch_loss, epochs=rounds, batches=batches, steps_per_epoch=per_round,
                        seed=seed, lr=float(self.lr), weight_decay=float(self.weight_decay),
                        schedule="step", milestones=(0.5, 0.75), gamma=0.1,
                        validate=validate if len(val_idx) else None, device=dev,
                        name=type(self).__name__)
        self.module_ = trained.module
        self.size_ = int(images.shape[1])
        self.out_features_ = int(out_features)
        self.n_train_ = int(len(train_idx))
        self.best_epoch_ = -1 if trained.best_epoch is None else int(trained.best_epoch)
        log.debug("ConvNetNode: %d training rows, %d validation rows, best epoch %s", len(train_idx),
                  len(val_idx), trained.best_epoch)
        return self

    # -- predicting -------------------------------------------------------------------------
    def _forward(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not hasattr(self, "module_"):
            raise NotFittedError("ConvNetNode is not fitted")
        X = self._tensor(images)                                       # (N, 3, H, W)
        outs, feats = [], []
        with torch.no_grad():
            for start in range(0, len(X), PREDICT_BATCH):
                xb = X[start:start + PREDICT_BATCH].contiguous(memory_format=torch.channels_last)
                out, feat = self.module_(xb)                           # (b, out), (b, feat_dim)
                outs.append(out.numpy().astype(np.float64))
                feats.append(feat.numpy())
        width = self.module_.feat_dim
        return (np.concatenate(outs) if outs else np.zeros((0, self.out_features_)),
                np.concatenate(feats) if feats else np.zeros((0, width), np.float32))

    def predict(self, inputs):
        out, feat = self._forward(np.asarray(inputs["image"]))
        result = self._outputs(out)
        if self.features:
            result["feat"] = feat.astype(np.float32)                    # (N, feat_dim)
        return result

    def _extra_scores(self, predictions, y):
        # the paper's upstream loss on features: the 1-nearest-neighbour error of ``feat``
        return {"knn_error": knn_error(predictions["feat"], y)} if "feat" in predictions else {}

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {f"module.{k}": v.detach().cpu() for k, v in self.module_.state_dict().items()}
        state.update({"mean_": self.mean_, "scale_": self.scale_, "size_": self.size_,
                      "out_features_": self.out_features_, "n_train_": self.n_train_,
                      "best_epoch_": self.best_epoch_, **self._head_state()})
        return state

    def load_state_dict(self, state):
        self._restore_attributes(state)
        self.mean_ = np.asarray(self.mean_, dtype=np.float32)
        self.scale_ = np.asarray(self.scale_, dtype=np.float32)
        net = self._build(int(self.size_), int(self.out_features_))
        net.load_state_dict({k[len("module."):]: v for k, v in state.items() if k.startswith("module.")})
        self.module_ = net.to(memory_format=torch.channels_last).eval()
        return self
