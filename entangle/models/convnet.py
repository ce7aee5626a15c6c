"""The small ConvNet of the paper's illustrative experiments, as a node of a system.

Wu et al.'s SVHN experiments use a two-block ConvNet (5x5 convolutions, batch norm, max-pooling)
whose head is a linear layer or an MLP; a downstream model reads either its prediction or its
*features*, the flattened output of the convolutional trunk (the head's input). It trains with
Adam, the learning rate times 0.1 at 50 % and 75 % of the run (:func:`entangle.training.train`).

Two run lengths. ``epochs`` (the paper's protocol): that many passes over the training rows,
whatever their number, so every subset is trained towards convergence and a larger one gets
more steps; the paper keeps the last epoch's weights (``checkpoint="last"``) except for its
regression upstream, which keeps the epoch best on a clean validation set. ``steps`` (without
``epochs``): a fixed number of optimizer steps for every training-set size, cut into ``evals``
rounds each ending with a validation: cheaper at the largest sizes, but "more data" then means
fewer passes, and the best-validation checkpoint picks the weights that fit noisy labels least.

Augmentation as the paper's: a random crop of the image padded by ``crop`` pixels of black on
each side (4 in the paper) and, with ``flip``, a random horizontal flip.
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
#: which weights a run keeps: the best validation round's, or the last round's
CHECKPOINTS = ("best", "last")


def training_rows(n_pool: int, subsample: float) -> int:
    """How many of a pool's rows (in the source's order) a ``subsample`` share trains on: the
    one rule :meth:`ConvNetNode.fit` applies, also used to tell seen rows from unseen ones."""
    return max(2, int(round(float(subsample) * int(n_pool))))


def augment(x: torch.Tensor, *, crop: int, flip: bool, fill: torch.Tensor,
            gen: torch.Generator) -> torch.Tensor:
    """A random crop of each image padded by ``crop`` pixels of ``fill`` (per channel), and a
    random horizontal flip of half of them with ``flip`` (torchvision's ``RandomCrop(size,
    padding=crop)`` and ``RandomHorizontalFlip``, batched). ``x`` (B, C, H, W); the draws come
    from ``gen`` (CPU), so a seed fixes them."""
    b, c, h, w = x.shape
    if crop > 0:
        p = int(crop)
        padded = fill.to(x.device).view(1, c, 1, 1).expand(b, c, h + 2 * p, w + 2 * p).clone()
        padded[:, :, p:p + h, p:p + w] = x                                   # (B, C, H+2p, W+2p)
        dy = torch.randint(0, 2 * p + 1, (b,), generator=gen)
        dx = torch.randint(0, 2 * p + 1, (b,), generator=gen)
        rows = (dy[:, None] + torch.arange(h)).to(x.device)                  # (B, H)
        cols = (dx[:, None] + torch.arange(w)).to(x.device)                  # (B, W)
        bi = torch.arange(b, device=x.device)[:, None, None, None]
        ci = torch.arange(c, device=x.device)[None, :, None, None]
        x = padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]   # (B, C, H, W)
    if flip:
        mirror = (torch.rand(b, generator=gen) < 0.5).to(x.device)[:, None, None, None]
        x = torch.where(mirror, x.flip(3), x)
    return x.contiguous(memory_format=torch.channels_last)


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
    f = torch.from_numpy(np.array(feat, dtype=np.float32))                # a writable copy
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
    epochs : passes over the training rows (the paper's run length; a validation after each
        with ``checkpoint="best"``). None: a fixed number of ``steps`` instead.
    steps, batch_size, lr, weight_decay : without ``epochs``, Adam for ``steps`` minibatches of
        ``batch_size`` rows (shuffled passes over the training rows, one after the other); the
        rate times 0.1 at 50 % and 75 % of the run.
    evals : without ``epochs``, validations during the run.
    checkpoint : ``"best"``: keep the weights of the validation round with the lowest loss on
        the ``holdout`` rows; ``"last"``: the last round's (the paper's, but for its regression).
    crop, flip : augmentation of the training images: a random crop after padding ``crop``
        black pixels on each side (the paper: 4), a random horizontal flip.
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
                 epochs: int | None = None, checkpoint: str = "best", crop: int = 0,
                 flip: bool = False, lr: float = 1e-3, batch_size: int = 128,
                 weight_decay: float = 0.0, subsample: float = 1.0, features: bool = True,
                 device: str = "auto"):
        self.task = task
        self.hidden = hidden
        self.channels = channels
        self.steps = steps
        self.evals = evals
        self.epochs = epochs
        self.checkpoint = checkpoint
        self.crop = crop
        self.flip = flip
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
        if epochs is not None and int(epochs) < 1:
            raise ValueError(f"ConvNetNode epochs must be >= 1 (or None for `steps`), got {epochs}")
        if checkpoint not in CHECKPOINTS:
            raise ValueError(f"ConvNetNode checkpoint must be one of {CHECKPOINTS}, got {checkpoint!r}")
        if int(crop) < 0:
            raise ValueError(f"ConvNetNode crop must be >= 0 pixels, got {crop}")
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
        images = np.asarray(inputs["image"])                         # (N, H, W, 3)
        if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
            raise ValueError(f"ConvNetNode reads square colour images (N, H, W, 3), got {images.shape}")
        y = np.asarray(_one_target(targets, type(self).__name__))
        n = len(images)
        held = np.zeros(n, bool) if inputs.get("holdout") is None else np.asarray(inputs["holdout"]).astype(bool)
        pool = np.flatnonzero(~held)
        train_idx = pool[:training_rows(len(pool), self.subsample)]  # the source's order
        self._train(images, y, train_idx, np.flatnonzero(held), seed)
        return self

    def _train(self, images: np.ndarray, y: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray,
               seed: int, record=None) -> None:
        """Fit the network on rows ``train_idx`` (validating on ``val_idx``); ``record(rows,
        losses)``, if given, receives every training step's per-sample losses (rows index
        ``train_idx``'s order) before augmentation is undone, i.e. as the step saw them."""
        from entangle.training import resolve_device, train

        self.mean_ = images[train_idx].mean(axis=(0, 1, 2)).astype(np.float32)           # (3,)
        self.scale_ = np.maximum(images[train_idx].std(axis=(0, 1, 2)), 1e-6).astype(np.float32)
        if self.task == "classification":
            self.classes_, y_idx = np.unique(y, return_inverse=True)
            yt = torch.as_tensor(y_idx, dtype=torch.long)                                # (N,)
            out_features = len(self.classes_)

            def crit_each(out, target):  # out (batch, classes), target (batch,)
                return F.cross_entropy(out, target, reduction="none")
        else:
            yv = y.astype(np.float64)
            self.y_mean_ = float(yv[train_idx].mean())
            self.y_scale_ = float(max(yv[train_idx].std(), 1e-12))
            yt = torch.as_tensor((yv - self.y_mean_) / self.y_scale_, dtype=torch.float32)  # (N,)
            out_features = 1

            def crit_each(out, target):  # out (batch, 1), target (batch,)
                return (out[:, 0] - target) ** 2
        dev = resolve_device(self.device)
        torch.manual_seed(seed)
        net = self._build(images.shape[1], out_features).to(memory_format=torch.channels_last)
        X = self._tensor(images)                                       # (N, 3, H, W)
        Xtr = X[torch.as_tensor(train_idx)].contiguous(memory_format=torch.channels_last).to(dev)
        ytr = yt[torch.as_tensor(train_idx)].to(dev)
        Xva = X[torch.as_tensor(val_idx)].contiguous(memory_format=torch.channels_last).to(dev)
        yva = yt[torch.as_tensor(val_idx)].to(dev)

        batch = min(int(self.batch_size), len(train_idx))
        if self.epochs is not None:   # whole passes: every row once per round
            rounds = int(self.epochs)
            per_round = -(-len(train_idx) // batch)
        else:
            rounds = int(self.evals)
            per_round = int(self.steps) // rounds
        gen = torch.Generator().manual_seed(int(seed))
        aug_gen = torch.Generator().manual_seed(int(seed) + 7919)  # its own stream: order stays
        fill = torch.as_tensor(-self.mean_ / self.scale_)              # black, standardized (3,)
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

        def epoch_batches(round_: int):
            """One shuffled pass in minibatches (the last one shorter): the paper's epochs."""
            yield from torch.randperm(len(train_idx), generator=gen).split(batch)

        def batch_loss(net, idx, step):
            xb = Xtr[idx.to(dev)]
            if int(self.crop) or self.flip:
                xb = augment(xb, crop=int(self.crop), flip=bool(self.flip), fill=fill, gen=aug_gen)
            each = crit_each(net(xb)[0], ytr[idx.to(dev)])             # (batch,)
            if record is not None:
                record(idx.numpy(), each.detach().cpu().numpy())
            return each.mean()

        def validate(net) -> float:
            total = 0.0
            for start in range(0, len(val_idx), PREDICT_BATCH):
                sl = slice(start, start + PREDICT_BATCH)
                total += float(crit_each(net(Xva[sl])[0], yva[sl]).sum())
            return total / len(val_idx)

        use_val = self.checkpoint == "best" and len(val_idx) > 0
        trained = train(net, batch_loss, epochs=rounds,
                        batches=epoch_batches if self.epochs is not None else batches,
                        steps_per_epoch=per_round, seed=seed, lr=float(self.lr),
                        weight_decay=float(self.weight_decay), schedule="step",
                        milestones=(0.5, 0.75), gamma=0.1, validate=validate if use_val else None,
                        device=dev, name=type(self).__name__)
        self.module_ = trained.module
        self.size_ = int(images.shape[1])
        self.out_features_ = int(out_features)
        self.n_train_ = int(len(train_idx))
        self.best_epoch_ = -1 if trained.best_epoch is None else int(trained.best_epoch)
        self.train_loss_ = float(trained.history[-1])
        log.debug("ConvNetNode: %d training rows, %d validation rows, %d rounds, kept %s", len(train_idx),
                  len(val_idx), rounds, "the last" if trained.best_epoch is None else trained.best_epoch)

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
                      "best_epoch_": self.best_epoch_, "train_loss_": getattr(self, "train_loss_", float("nan")),
                      **self._head_state()})
        return state

    def load_state_dict(self, state):
        self._restore_attributes(state)
        self.mean_ = np.asarray(self.mean_, dtype=np.float32)
        self.scale_ = np.asarray(self.scale_, dtype=np.float32)
        net = self._build(int(self.size_), int(self.out_features_))
        net.load_state_dict({k[len("module."):]: v for k, v in state.items() if k.startswith("module.")})
        self.module_ = net.to(memory_format=torch.channels_last).eval()
        return self


def row_keys(images: np.ndarray) -> np.ndarray:
    """A 64-bit fingerprint of each image's pixels (N,) uint64: how a ranking fitted on one
    split finds its rows again in the split it is asked about."""
    import hashlib
    flat = np.ascontiguousarray(images).reshape(len(images), -1)
    return np.array([int.from_bytes(hashlib.blake2b(r.tobytes(), digest_size=8).digest(), "little")
                     for r in flat], dtype=np.uint64)


class LossAreaRankNode(ConvNetNode):
    """An order of difficulty learned from a clean model's training: the area under each
    training example's loss curve (its mean per-sample loss over every step that saw it).

    The paper's entanglement experiment swaps 1 and 7 on the first share of a stored ranking
    of its training set's ones and sevens (``aul_for_uu-ent.pth``), a ranking that depends on
    the label and that a network can learn. This node computes one: a ConvNet trained on the
    clean labels (``y``) of the non-``holdout`` rows, each step's per-sample losses summed per
    row; rows whose label is in ``rank_labels`` are ranked from the largest area (hardest, 0)
    down. ``order`` is that rank on the rows it was fitted on (found again by their pixels), −1
    on every other row; ``pred`` and ``proba`` are the clean classifier's.

    Parameters are :class:`ConvNetNode`'s (``epochs`` sets the run whose curve is integrated;
    the last weights are kept), plus ``rank_labels``.
    """

    version = "1"

    def __init__(self, *, rank_labels: Sequence[int] = (1, 7), task: str = "classification",
                 hidden: Sequence[int] = (), channels: Sequence[int] = (32, 32), steps: int = 200,
                 evals: int = 10, epochs: int | None = 20, checkpoint: str = "last", crop: int = 0,
                 flip: bool = False, lr: float = 1e-3, batch_size: int = 128,
                 weight_decay: float = 0.0, subsample: float = 1.0, features: bool = False,
                 device: str = "auto"):
        super().__init__(task=task, hidden=hidden, channels=channels, steps=steps, evals=evals,
                         epochs=epochs, checkpoint=checkpoint, crop=crop, flip=flip, lr=lr,
                         batch_size=batch_size, weight_decay=weight_decay, subsample=subsample,
                         features=features, device=device)
        self.rank_labels = rank_labels
        if task != "classification":
            raise ValueError(f"LossAreaRankNode ranks by a classifier's loss: task must be "
                             f"'classification', got {task!r}")

    @property
    def output_kinds(self) -> dict[str, str]:  # type: ignore[override]
        return {**super().output_kinds, "order": "array"}

    def fit(self, inputs, targets, *, seed):
        images = np.asarray(inputs["image"])                         # (N, H, W, 3)
        y = np.asarray(_one_target(targets, type(self).__name__))
        held = (np.zeros(len(images), bool) if inputs.get("holdout") is None
                else np.asarray(inputs["holdout"]).astype(bool))
        pool = np.flatnonzero(~held)
        train_idx = pool[:training_rows(len(pool), self.subsample)]
        area = np.zeros(len(train_idx))                               # summed loss per row
        seen = np.zeros(len(train_idx))

        def record(rows: np.ndarray, losses: np.ndarray) -> None:
            np.add.at(area, rows, losses)
            np.add.at(seen, rows, 1.0)

        self._train(images, y, train_idx, np.flatnonzero(held), seed, record=record)
        self.area_ = area / np.maximum(seen, 1.0)                     # (n_train,) mean loss
        ranked = np.flatnonzero(np.isin(y[train_idx], np.asarray(self.rank_labels)))
        by_area = ranked[np.argsort(-self.area_[ranked], kind="stable")]
        self.keys_ = row_keys(images[train_idx[by_area]])             # hardest first
        return self

    def predict(self, inputs):
        out = super().predict(inputs)
        keys = row_keys(np.asarray(inputs["image"]))
        lookup = {int(k): r for r, k in enumerate(self.keys_.tolist())}
        out["order"] = np.array([lookup.get(int(k), -1) for k in keys.tolist()], dtype=np.int64)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "area_": self.area_, "keys_": self.keys_}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.keys_ = np.asarray(self.keys_, dtype=np.uint64)
        return self
