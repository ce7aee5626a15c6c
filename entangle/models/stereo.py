"""Stereo depth nodes: the learned network (disparity or depth loss), OpenCV stereo and the oracle.

All three read a rectified pair (or, for the oracle, the ground-truth disparity) with the left
camera's projection ``P2`` and the baseline, and output the same three values:

* ``disparity`` (N, H, W) float32, pixels, 0 = invalid;
* ``depth`` (N, H, W) float32, metres, ``f·B / disparity``, 0 = invalid;
* ``focal_baseline`` (N,) float32, ``f·B`` in px·m, so that ``loss`` and ``score`` (which see
  only predictions and targets) can convert the ground-truth disparity to depth.

**The primary metric** of every stereo node is ``depth_mae``: the mean absolute depth error in
metres over every scored pixel (valid ground truth up to ``max_depth``, 80 m). The disparity-loss
and the depth-loss network each minimise a *different* objective, so their own losses (pixels
vs metres) cannot be compared; an "improvement" u -> u' needs one yardstick for both. Depth error
is the quantity the change of loss is meant to improve (the paper judges the depth-loss model
better on depth error), and smooth-L1 on depth is, beyond one metre of error, exactly the mean
absolute depth error, so ``depth_mae`` is the depth-loss model's own objective measured the same
way for any stereo node. ``score`` also returns each node's own objective (``loss``), disparity
EPE and D1, depth abs-rel and RMSE, each per distance bin and near/far (20 m).

The per-sample loss (one number per image) is the node's own objective on that image: the
smooth-L1 of the final disparity, or of the final depth, over the scored pixels, as chosen by
``objective``. (The hyperparameter is called ``objective`` and not ``loss`` because ``loss`` is
the node's per-sample loss method, which a stored hyperparameter of that name would shadow.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from entangle.models.stereo_metrics import (CHUNK, depth_from_disparity, evaluation_mask,
                                            per_image_smooth_l1, stereo_metrics)
from entangle.node import BaseNode, NodeError, NotFittedError

log = logging.getLogger(__name__)

OBJECTIVES = ("disparity", "depth")
#: fixed image normalisation (per channel, on [0, 1] values).
IMAGE_MEAN, IMAGE_STD = 0.45, 0.25


# -- input checks shared by the nodes -----------------------------------------------------------

def _images(inputs: Mapping[str, Any], owner: str) -> tuple[np.ndarray, np.ndarray]:
    """The ``left`` and ``right`` inputs, checked: (N, H, W, 3) uint8 of the same shape."""
    out = []
    for name in ("left", "right"):
        if name not in inputs:
            raise ValueError(f"{owner}: missing input {name!r} (have {sorted(inputs)})")
        a = np.asarray(inputs[name])
        if a.ndim != 4 or a.shape[-1] != 3:
            raise ValueError(f"{owner}: input {name!r} must be (N, H, W, 3) images, got shape {a.shape}")
        if a.dtype != np.uint8:
            raise ValueError(f"{owner}: input {name!r} must be uint8 images, got {a.dtype}")
        out.append(a)
    if out[0].shape != out[1].shape:
        raise ValueError(f"{owner}: inputs 'left' {out[0].shape} and 'right' {out[1].shape} differ in shape")
    return out[0], out[1]


def focal_baseline(inputs: Mapping[str, Any], n: int, owner: str = "stereo node") -> np.ndarray:
    """``f·B`` per image (N,) float64 from inputs ``calib`` (N, 3, 4) P2 and ``baseline`` (N,) metres."""
    for name in ("calib", "baseline"):
        if name not in inputs:
            raise ValueError(f"{owner}: missing input {name!r} (have {sorted(inputs)})")
    calib = np.asarray(inputs["calib"], dtype=np.float64)
    if calib.shape != (n, 3, 4):
        raise ValueError(f"{owner}: input 'calib' must be P2 per image, shape ({n}, 3, 4); got {calib.shape}")
    baseline = np.asarray(inputs["baseline"], dtype=np.float64).reshape(-1)
    if baseline.shape != (n,):
        raise ValueError(f"{owner}: input 'baseline' must have shape ({n},), got {np.shape(inputs['baseline'])}")
    f = calib[:, 0, 0]
    for name, v in (("calib (focal length P2[0, 0])", f), ("baseline", baseline)):
        bad = np.flatnonzero(~np.isfinite(v) | (v <= 0))
        if bad.size:
            raise ValueError(f"{owner}: input {name} must be positive and finite; sample {int(bad[0])} "
                             f"has {v[bad[0]]}")
    return f * baseline


def _target_disparity(targets: Mapping[str, Any], shape: tuple[int, ...], owner: str) -> np.ndarray:
    if "disparity" not in targets:
        raise ValueError(f"{owner}: missing target 'disparity' (have {sorted(targets)})")
    d = np.asarray(targets["disparity"], dtype=np.float32)
    if d.shape != shape:
        raise ValueError(f"{owner}: target 'disparity' must have shape {shape}, got {d.shape}")
    bad = np.flatnonzero(~np.isfinite(d).reshape(len(d), -1).all(axis=1))
    if bad.size:
        raise ValueError(f"{owner}: target 'disparity' of sample {int(bad[0])} holds NaN or inf")
    return d


def _check_finite(owner: str, name: str, values: np.ndarray) -> None:
    """Raise :class:`NodeError` naming the node and the first sample with NaN/inf ``values``."""
    bad = np.flatnonzero(~np.isfinite(values).reshape(len(values), -1).all(axis=1))
    if bad.size:
        raise NodeError(f"{owner} produced NaN or infinite {name} for sample {int(bad[0])} "
                        f"({bad.size} of {len(values)} samples affected)")


class _StereoOutputs(BaseNode):
    """The outputs, per-image loss and metrics every stereo node shares (see module docstring)."""

    target_kinds = {"disparity": "disparity"}
    output_kinds = {"disparity": "disparity", "depth": "depth", "focal_baseline": "scalar"}
    metric = "depth_mae"
    higher_is_better = False

    objective: str
    max_depth: float

    def _outputs(self, disparity: np.ndarray, fb: np.ndarray) -> dict[str, np.ndarray]:
        disparity = np.asarray(disparity, dtype=np.float32)
        _check_finite(repr(self), "disparity", disparity)
        disparity = np.where(disparity > 0, disparity, 0).astype(np.float32)
        # depth from the stored (float32) f·B, exactly as ``loss`` converts the ground truth
        fb = np.asarray(fb, dtype=np.float32)
        depth = depth_from_disparity(disparity, fb)
        _check_finite(repr(self), "depth", depth)
        return {"disparity": disparity, "depth": depth, "focal_baseline": fb}

    def _check_objective(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"{type(self).__name__}: objective must be one of {OBJECTIVES}, "
                             f"got {self.objective!r}")

    def loss(self, predictions: Mapping[str, Any], targets: Mapping[str, Any]) -> np.ndarray:
        """Per image: smooth-L1 of the disparity (px) or of the depth (m) over the scored pixels."""
        self._check_objective()
        pred_all = np.asarray(predictions["disparity"])
        gt_all = _target_disparity(targets, pred_all.shape, repr(self))
        fb_all = np.asarray(predictions["focal_baseline"], dtype=np.float64)
        out = np.zeros(len(pred_all), dtype=np.float64)
        # per image, so a few images at a time: whole-split float64 copies cost gigabytes
        for b0 in range(0, len(pred_all), CHUNK):
            sl = slice(b0, b0 + CHUNK)
            pred = np.asarray(pred_all[sl], dtype=np.float64)
            gt, fb = np.asarray(gt_all[sl], dtype=np.float64), fb_all[sl]
            mask = evaluation_mask(gt, fb, self.max_depth)
            if self.objective == "disparity":
                out[sl] = per_image_smooth_l1(pred, gt, mask)
            else:
                depth_gt = depth_from_disparity(gt, fb).astype(np.float64)
                out[sl] = per_image_smooth_l1(np.asarray(predictions["depth"][sl], dtype=np.float64),
                                              depth_gt, mask)
        return out

    def score(self, predictions: Mapping[str, Any], targets: Mapping[str, Any]) -> dict[str, float]:
        """``depth_mae`` (primary), the own objective ``loss``, EPE, D1, abs-rel, RMSE, per bin."""
        pred = np.asarray(predictions["disparity"])
        gt = _target_disparity(targets, pred.shape, repr(self))
        metrics = stereo_metrics(pred, gt, predictions["focal_baseline"], max_depth=self.max_depth)
        metrics["loss"] = float(np.mean(self.loss(predictions, targets)))
        return metrics


# -- the learned network ------------------------------------------------------------------------

class _NetworkStereo(_StereoOutputs):
    """What every node holding a fitted :mod:`entangle.models.stereo_net` network shares.

    Prediction (full images, in batches of ``batch_size``, batch norm folded into the
    convolutions), the stored state, and :meth:`network_config`. Subclasses decide how the
    network is fitted: trained (:class:`StereoNet`) or read from a file (:class:`StereoCheckpoint`).
    """

    input_kinds = {"left": "image", "right": "image", "calib": "calib", "baseline": "scalar"}
    execution_params = ("device",)    # where it runs, not what it computes

    batch_size: int
    device: str

    def network_config(self):
        """The :class:`~entangle.models.stereo_net.StereoNetConfig` of the network."""
        raise NotImplementedError

    def _device(self):
        import torch
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def _check_size(self, height: int, width: int) -> None:
        from entangle.models.stereo_net import check_image_size
        try:
            check_image_size(height, width)
        except ValueError as err:
            raise ValueError(f"{self!r}: {err}") from None

    @staticmethod
    def _to_tensor(images: np.ndarray, device):
        """uint8 (B, H, W, 3) -> normalised float (B, 3, H, W) on ``device``."""
        import torch
        images = np.asarray(images)
        if not images.flags.writeable:        # a memory-mapped split: torch wants its own copy
            images = images.copy()
        x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        return (x - IMAGE_MEAN) / IMAGE_STD

    def _fitted_module(self):
        if not hasattr(self, "module_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit first")
        return self.module_

    def predict_stacked(self, inputs: Mapping[str, Any], last_only: bool = False) -> np.ndarray:
        """All stacked disparities ``(outputs, N, H, W)`` float32 (the last is ``predict``'s).

        ``outputs`` is 3, or 4 when the network refines (see :mod:`entangle.models.stereo_net`);
        ``last_only`` computes only the last, ``(1, N, H, W)``.
        """
        import torch

        from entangle.models.stereo_net import fused_for_inference
        module = self._fitted_module()
        owner = repr(self)
        left, right = _images(inputs, owner)
        n, h, w, _ = left.shape
        self._check_size(h, w)
        dev = self._device()
        net = fused_for_inference(module).to(dev)
        bs = max(int(self.batch_size), 1)
        chunks = []
        with torch.inference_mode():
            for b0 in range(0, n, bs):
                sl = slice(b0, b0 + bs)
                chunks.append(net(self._to_tensor(left[sl], dev), self._to_tensor(right[sl], dev),
                                  last_only=last_only).cpu())
        if not chunks:
            return np.zeros((1 if last_only else module.config.num_outputs, 0, h, w), dtype=np.float32)
        return torch.cat(chunks, dim=1).numpy().astype(np.float32)

    def predict(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """``disparity``, ``depth`` (N, H, W) and ``focal_baseline`` (N,) for a batch of pairs."""
        disparity = self.predict_stacked(inputs, last_only=True)[-1]
        return self._outputs(disparity, focal_baseline(inputs, len(disparity), repr(self)))

    def _module_state(self) -> dict[str, Any]:
        return {f"module.{k}": v.detach().cpu().clone()
                for k, v in self._fitted_module().state_dict().items()}

    def _load_module(self, state: Mapping[str, Any], config) -> None:
        import torch

        from entangle.models.stereo_net import StereoNet as Net
        net = Net(config)
        net.load_state_dict({k[len("module."):]: torch.as_tensor(v) for k, v in state.items()
                             if k.startswith("module.")})
        self.module_ = net.eval()


class StereoNet(_NetworkStereo):
    """PSMNet-style stereo network trained with a disparity loss or a depth loss (u vs u').

    The network (:mod:`entangle.models.stereo_net`) always predicts disparity; the objective
    decides whether PSMNet's smooth-L1 on its stacked outputs (weights 0.5, 0.7, 1.0, and 1.0
    for the refined output) is applied to disparity or to depth ``f·B / disparity``, as in the
    paper's code. Everything else (data, crops, order, initialisation, optimiser) is the same for
    both objectives.

    **Warm start.** As in the paper (PSMNet pretrained on SceneFlow, then fine-tuned on KITTI),
    :meth:`init_from` makes the next :meth:`fit` start from another fitted network's weights
    (a :class:`StereoNet` or a :class:`StereoCheckpoint` with the same network config) instead
    of a random initialisation; the seed still fixes the order and the crops.

    Parameters
    ----------
    objective : {"disparity", "depth"}
        Space of the training loss and of the per-image loss.
    max_disp : int
        Disparities searched, ``[0, max_disp)`` pixels; a multiple of 16. 64 reaches 3.1 m at
        the world's geometry (f·B = 195.8 px·m at 624 px width).
    channels, groups, volume_channels : int
        Feature channels, correlation groups, channels of the 3D convolutions.
    disp_step : {4, 2, 1}
        Spacing (px) of the cost volume's candidate disparities; ``max_disp / disp_step`` must
        be a multiple of 4.
    refine : bool
        Add the full-resolution image-guided refinement (a fourth output, the prediction).
    refine_channels : int
        Channels of the refinement's convolutions.
    head_kernel : {3, 1}
        Kernel of the score heads over the cost volume.
    epochs, lr, batch_size : training schedule (Adam, cosine decay of the learning rate to 0).
    crop : [height, width] or None
        Train on random crops of this size (multiples of 16); None trains on full images.
        Prediction always runs on full images.
    max_depth : float
        Pixels with ground truth farther than this (metres) are not trained on nor scored.
    device : "auto", "cpu" or "cuda"
        "auto" uses CUDA when present.
    """

    version = "2"

    def __init__(self, *, objective: str = "disparity", max_disp: int = 64, channels: int = 16,
                 groups: int = 4, volume_channels: int = 8, disp_step: int = 2, refine: bool = True,
                 refine_channels: int = 8, head_kernel: int = 3, epochs: int = 4, lr: float = 1e-3, batch_size: int = 4,
                 crop: Any = None, max_depth: float = 80.0, device: str = "auto"):
        self.objective = objective
        self.max_disp = max_disp
        self.channels = channels
        self.groups = groups
        self.volume_channels = volume_channels
        self.disp_step = disp_step
        self.refine = refine
        self.refine_channels = refine_channels
        self.head_kernel = head_kernel
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.crop = crop
        self.max_depth = max_depth
        self.device = device

    def network_config(self):
        from entangle.models.stereo_net import StereoNetConfig
        return StereoNetConfig(max_disp=int(self.max_disp), channels=int(self.channels),
                               groups=int(self.groups), volume_channels=int(self.volume_channels),
                               disp_step=int(self.disp_step), refine=bool(self.refine),
                               refine_channels=int(self.refine_channels),
                               head_kernel=int(self.head_kernel))

    def init_from(self, other: "_NetworkStereo") -> None:
        """Make the next :meth:`fit` start from ``other``'s fitted weights (fine-tuning).

        ``other`` is a fitted :class:`StereoNet` or :class:`StereoCheckpoint`; its weights are
        copied now, so refitting ``other`` later changes nothing here. The warm start belongs to
        this instance: :meth:`clone` (a fresh node from the parameters) starts from scratch.

        Raises
        ------
        ValueError
            If ``other`` holds no stereo network or its network config differs from this node's
            (both configs are named).
        NotFittedError
            If ``other`` is not fitted.
        """
        if not isinstance(other, _NetworkStereo):
            raise ValueError(f"{self!r} can start only from a fitted StereoNet or StereoCheckpoint, "
                             f"not a {type(other).__name__}")
        source = other._fitted_module()
        mine, theirs = self.network_config(), source.config
        if mine != theirs:
            raise ValueError(f"{type(self).__name__}.init_from: the network configs differ, so the "
                             f"weights cannot be reused: this node's {mine} vs the source's "
                             f"{theirs} (from {other!r})")
        self._init_state = {k: v.detach().cpu().clone() for k, v in source.state_dict().items()}
        self._init_origin = repr(other)

    # -- the contract --------------------------------------------------------------------------
    def fit(self, inputs: Mapping[str, Any], targets: Mapping[str, Any], *, seed: int) -> "StereoNet":
        """Train with the chosen objective from a random init (or :meth:`init_from`'s weights).

        The seed fixes the initialisation, the order of the images and the crops.
        """
        import torch
        from tqdm.auto import tqdm

        from entangle.models.stereo_net import StereoNet as Net
        from entangle.models.stereo_net import disparity_to_depth, stacked_smooth_l1

        self._check_objective()
        owner = repr(self)
        left, right = _images(inputs, owner)
        n, h, w, _ = left.shape
        self._check_size(h, w)
        fb_all = focal_baseline(inputs, n, owner)
        disp_all = _target_disparity(targets, (n, h, w), owner)
        ch, cw = (h, w) if self.crop is None else (int(self.crop[0]), int(self.crop[1]))
        if ch > h or cw > w:
            raise ValueError(f"{owner}: crop {ch}x{cw} is larger than the images ({h}x{w})")
        self._check_size(ch, cw)

        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        dev = self._device()
        net = Net(self.network_config())
        init = getattr(self, "_init_state", None)
        if init is not None:
            net.load_state_dict(init)
            log.info("%s starts from the weights of %s", owner, self._init_origin)
        net = net.to(dev).train()
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        bs = int(self.batch_size)
        steps = int(self.epochs) * math.ceil(n / bs)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))

        history = []
        start = time.perf_counter()
        bar = tqdm(total=steps, desc=f"StereoNet[{self.objective}]", unit="batch", disable=None)
        for epoch in range(int(self.epochs)):
            perm = torch.randperm(n, generator=gen).numpy()
            total, batches = 0.0, 0
            for step, b0 in enumerate(range(0, n, bs)):
                idx = np.sort(perm[b0:b0 + bs])
                y0 = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
                x0 = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
                win = (slice(None), slice(y0, y0 + ch), slice(x0, x0 + cw))
                l = self._to_tensor(left[idx][win], dev)                           # (B, 3, ch, cw)
                r = self._to_tensor(right[idx][win], dev)
                d = torch.from_numpy(disp_all[idx][win]).to(dev)                   # (B, ch, cw)
                fb = torch.from_numpy(fb_all[idx]).float().to(dev)                 # (B,)
                # train on valid pixels within the searched range and max_depth
                mask = (d > 0) & (d < self.max_disp) & (fb.view(-1, 1, 1) <= self.max_depth * d)
                if not bool(mask.any()):
                    bar.update(1)
                    continue
                out = net(l, r)                                                    # (outputs, B, ch, cw)
                if self.objective == "depth":
                    out = disparity_to_depth(out, fb)
                    target = fb.view(-1, 1, 1) / d.clamp(min=1e-6)
                else:
                    target = d
                loss = stacked_smooth_l1(out, target, mask)
                if not torch.isfinite(loss):
                    raise NodeError(f"{owner}: training loss became {loss.item()} at epoch {epoch}, "
                                    f"step {step} (seed {seed})")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item()
                batches += 1
                bar.update(1)
            history.append(total / max(batches, 1))
            bar.set_postfix(epoch=epoch, loss=f"{history[-1]:.3f}")
            log.info("%s epoch %d: loss %.4f", owner, epoch, history[-1])
        bar.close()
        elapsed = time.perf_counter() - start
        log.info("%s trained on %d images x %d epochs in %.1f s (%.1f images/s)", owner, n,
                 self.epochs, elapsed, n * int(self.epochs) / max(elapsed, 1e-9))
        self.module_ = net.cpu().eval()
        self.train_loss_ = np.asarray(history, dtype=np.float64)
        return self

    def state_dict(self) -> dict[str, Any]:
        import torch
        state = self._module_state()
        state["train_loss"] = torch.as_tensor(self.train_loss_)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> "StereoNet":
        self._load_module(state, self.network_config())
        self.train_loss_ = np.asarray(state.get("train_loss", []), dtype=np.float64)
        return self


#: the ``format`` entry of a stereo checkpoint file (:func:`save_checkpoint`).
CHECKPOINT_FORMAT = "entangle.stereo_net/1"


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_checkpoint(module: Any, path: str | Path, fmt: str, **meta: Any) -> str:
    """Write a fitted torch ``module`` (its ``config.to_dict()`` and weights) to ``path`` under
    the ``format`` entry ``fmt``; returns the file's SHA-256.

    The file is a plain ``torch.save`` of tensors, strings and numbers (no pickled objects), read
    back with ``weights_only=True`` by :func:`read_checkpoint`. ``meta`` (JSON-able: how it was
    made, what it cost) is stored beside the weights. Written to a ``.partial`` file first.
    """
    import torch
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": fmt, "config": module.config.to_dict(),
               "state_dict": {k: v.detach().cpu().clone() for k, v in module.state_dict().items()},
               "meta": json.loads(json.dumps(meta))}
    tmp = path.with_name(path.name + ".partial")
    torch.save(payload, tmp)
    tmp.replace(path)
    return file_sha256(path)


def read_checkpoint(path: str | Path, sha256: str, fmt: str, owner: str) -> dict[str, Any]:
    """The payload of a checkpoint file after checking that it exists, that its SHA-256 is
    ``sha256`` and that its ``format`` is ``fmt``; each refusal names ``owner``'s field."""
    import torch
    path = _resolve(path)
    if not path.is_file():
        raise FileNotFoundError(f"{owner}.path: checkpoint {path} does not exist")
    digest = file_sha256(path)
    if digest != str(sha256).lower():
        raise ValueError(f"{owner}.sha256: checkpoint {path} has SHA-256 {digest}, not the expected "
                         f"{sha256}: the file changed (or the digest is wrong); refusing to load it")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise ValueError(f"{owner}.path: {path} is not a checkpoint of format {fmt!r}")
    return payload


def save_checkpoint(node: _NetworkStereo, path: str | Path, **meta: Any) -> str:
    """Write ``node``'s fitted network to ``path`` (:func:`write_checkpoint`); returns its SHA-256."""
    return write_checkpoint(node._fitted_module(), path, CHECKPOINT_FORMAT, **meta)


def _resolve(path: str | Path) -> Path:
    """A relative checkpoint path is looked up in the working folder, then the repository."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    repo = Path(__file__).resolve().parents[2]
    return repo / p if (repo / p).exists() else p


class CheckpointNode:
    """What every node read from a checkpoint file shares: its parameters (the file, its
    expected SHA-256, and the per-image loss, batch and device of the network it holds), the
    network config known only once fitted, and the verified load (:func:`read_checkpoint`)."""

    def __init__(self, *, path: str, sha256: str, objective: str = "disparity",
                 max_depth: float = 80.0, batch_size: int = 4, device: str = "auto"):
        self.path = path
        self.sha256 = sha256
        self.objective = objective
        self.max_depth = max_depth
        self.batch_size = batch_size
        self.device = device

    def _checkpoint_config(self) -> Any:
        if not hasattr(self, "config_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted: its network config comes "
                                 "from the checkpoint file; call fit first")
        return self.config_

    def _load_checkpoint(self, fmt: str, config_cls: Any) -> None:
        """Read and verify the file, then take its config, weights and ``meta_``."""
        payload = read_checkpoint(self.path, self.sha256, fmt, type(self).__name__)
        self.config_ = config_cls(**payload["config"])
        self._load_module({f"module.{k}": v for k, v in payload["state_dict"].items()}, self.config_)
        self.meta_ = dict(payload.get("meta") or {})


class StereoCheckpoint(CheckpointNode, _NetworkStereo):
    """A stereo network read from a checkpoint file: its "fit" loads and verifies the file.

    It behaves like the :class:`StereoNet` whose weights the file holds (same outputs, loss
    and metrics), and :meth:`StereoNet.init_from` accepts it: the pretrained network that every
    fine-tuned stereo node of a study starts from, made once by
    ``experiments/pretrain_stereo.py`` and shipped under ``datasets/checkpoints/``.

    Parameters
    ----------
    path : str
        The file (written by :func:`save_checkpoint`); relative paths are looked up in the
        working folder, then in the repository.
    sha256 : str
        Its expected SHA-256 (hex): a file with another digest is refused, naming the file.
    objective : {"disparity", "depth"}
        Space of the per-image loss (nothing is trained).
    max_depth, batch_size, device : as for :class:`StereoNet`.
    """

    version = "1"

    def network_config(self):
        return self._checkpoint_config()

    def fit(self, inputs: Mapping[str, Any], targets: Mapping[str, Any], *,
            seed: int) -> "StereoCheckpoint":
        """Load the file after checking its SHA-256; inputs, targets and seed are not read.

        Raises
        ------
        FileNotFoundError
            If the file does not exist.
        ValueError
            If its digest differs from ``sha256`` or it is not a stereo checkpoint.
        """

        from entangle.models.stereo_net import StereoNetConfig
        self._check_objective()
        self._load_checkpoint(CHECKPOINT_FORMAT, StereoNetConfig)
        return self

    def state_dict(self) -> dict[str, Any]:
        state = self._module_state()
        state["config"] = np.asarray(json.dumps(self.network_config().to_dict(), sort_keys=True))
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> "StereoCheckpoint":
        from entangle.models.stereo_net import StereoNetConfig
        self.config_ = StereoNetConfig(**json.loads(str(np.asarray(state["config"]))))
        self._load_module(state, self.config_)
        return self


# -- classical stereo ---------------------------------------------------------------------------

class ClassicalStereo(_StereoOutputs):
    """OpenCV block matching or semi-global matching, as a node (nothing to train).

    Wraps ``block_matching`` / ``semi_global_matching`` of
    :mod:`entangle.models.classical_stereo` (imported when the node is used). The search range
    is ``num_disparities`` from ``params`` or, per image, enough to reach ``min_depth`` metres.
    Invalid pixels are filled by KITTI's background interpolation when ``fill_holes`` (so every
    pixel has a depth, as the devkit scores it); otherwise they stay 0 and ``score`` reports the
    ``density``. A fourth output, ``matched`` (N, H, W) uint8, is 1 where the matcher found a
    match (what a refiner downstream reads as the invalid mask).

    Parameters
    ----------
    method : {"bm", "sgbm"}
    params : dict, optional
        Keyword arguments of the OpenCV wrapper (``block_size``, ``mode``, ``num_disparities``...).
    min_depth : float
        Nearest depth (m) the search range must reach when ``params`` gives no ``num_disparities``.
    fill_holes : bool
        Fill invalid pixels from their valid row neighbours (the farther of the two).
    objective : {"disparity", "depth"}
        Space of the per-image loss (there is no training).
    max_depth : float
        Pixels with ground truth farther than this (metres) are not scored.
    """

    input_kinds = {"left": "image", "right": "image", "calib": "calib", "baseline": "scalar"}
    output_kinds = {**_StereoOutputs.output_kinds, "matched": "mask"}
    version = "2"

    def __init__(self, *, method: str = "sgbm", params: dict | None = None, min_depth: float = 3.0,
                 fill_holes: bool = True, objective: str = "disparity", max_depth: float = 80.0):
        self.method = method
        self.params = params
        self.min_depth = min_depth
        self.fill_holes = fill_holes
        self.objective = objective
        self.max_depth = max_depth

    def fit(self, inputs: Mapping[str, Any], targets: Mapping[str, Any], *, seed: int) -> "ClassicalStereo":
        self._check_objective()
        self._matcher()
        self.fitted_ = True
        return self

    def _matcher(self):
        from entangle.models import classical_stereo
        names = {"bm": "block_matching", "sgbm": "semi_global_matching"}
        if self.method not in names:
            raise ValueError(f"{type(self).__name__}: method must be one of {sorted(names)}, got {self.method!r}")
        return getattr(classical_stereo, names[self.method])

    def predict(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        from entangle.models.classical_stereo import fill_invalid, num_disparities_for
        self.check_is_fitted()
        owner = repr(self)
        left, right = _images(inputs, owner)
        fb = focal_baseline(inputs, len(left), owner)
        match = self._matcher()
        disparity = np.zeros(left.shape[:3], dtype=np.float32)
        matched = np.zeros(left.shape[:3], dtype=np.uint8)
        for i in range(len(left)):
            kwargs = dict(self.params or {})
            if kwargs.get("num_disparities") is None:
                kwargs["num_disparities"] = num_disparities_for(max_disparity=fb[i] / self.min_depth)
            d = np.asarray(match(left[i], right[i], **kwargs), dtype=np.float32)
            if d.shape != left.shape[1:3]:
                raise NodeError(f"{owner}: {self.method} returned shape {d.shape} for sample {i}, "
                                f"expected {left.shape[1:3]}")
            # NaN marks no match: fill it, or keep it as the project's invalid value 0
            matched[i] = np.isfinite(d) & (d > 0)
            disparity[i] = fill_invalid(d) if self.fill_holes else np.nan_to_num(d, nan=0.0)
        return {**self._outputs(disparity, fb), "matched": matched}

    def state_dict(self) -> dict[str, Any]:
        return {"fitted_": True}

    def load_state_dict(self, state: Mapping[str, Any]) -> "ClassicalStereo":
        self.fitted_ = True
        return self


# -- the oracle ---------------------------------------------------------------------------------

class OracleStereo(_StereoOutputs):
    """Outputs the ground-truth disparity and depth: the upstream of L* in the decomposition.

    It reads the ground truth as an *input* (``disparity_gt``, wired from the data source) so
    that it can feed the detectors at predict time like any stereo node.
    """

    input_kinds = {"disparity_gt": "disparity", "calib": "calib", "baseline": "scalar"}
    version = "1"

    def __init__(self, *, objective: str = "disparity", max_depth: float = 80.0):
        self.objective = objective
        self.max_depth = max_depth

    def fit(self, inputs: Mapping[str, Any], targets: Mapping[str, Any], *, seed: int) -> "OracleStereo":
        self._check_objective()
        self.fitted_ = True
        return self

    def predict(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        self.check_is_fitted()
        owner = repr(self)
        if "disparity_gt" not in inputs:
            raise ValueError(f"{owner}: missing input 'disparity_gt' (have {sorted(inputs)})")
        gt = np.asarray(inputs["disparity_gt"], dtype=np.float32)
        if gt.ndim != 3:
            raise ValueError(f"{owner}: input 'disparity_gt' must be (N, H, W), got shape {gt.shape}")
        return self._outputs(gt, focal_baseline(inputs, len(gt), owner))

    def state_dict(self) -> dict[str, Any]:
        return {"fitted_": True}

    def load_state_dict(self, state: Mapping[str, Any]) -> "OracleStereo":
        self.fitted_ = True
        return self
