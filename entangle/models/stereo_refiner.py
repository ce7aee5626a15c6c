"""The hybrid stereo upstream: a classical matcher's disparity plus a learned residual refiner.

:class:`StereoRefiner` reads the rectified pair and a classical disparity map with its
``matched`` mask (wired from a :class:`~entangle.models.stereo.ClassicalStereo` node, computed
once per scene for every seed) and outputs the refined disparity, its depth and ``f·B`` like
every stereo node (:mod:`entangle.models.stereo`), with the same metrics (``depth_mae``) and
per-image loss. The network (:mod:`entangle.models.refine_net`) starts as the identity: an
untrained refiner outputs the classical disparity bit for bit.

Training minimises smooth-L1 of the refined disparity (``objective: disparity``) or of its depth
``f·B / d`` (``objective: depth``) on valid pixels up to ``max_depth``: the disparity loss weighs
every pixel's disparity error alike, so near objects dominate; the depth loss weighs a far pixel
by ``Z²/(f·B)``: the mechanism of the "Fixes That Fail" case study acts on the refiner exactly as
on PSMNet. :class:`RefinerCheckpoint` reads a pretrained refiner from a file with its SHA-256
(the one every seed and both losses fine-tune from, via ``init``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from entangle.models.stereo import (IMAGE_MEAN, IMAGE_STD, CheckpointNode, _images, _StereoOutputs,
                                    _target_disparity, focal_baseline, write_checkpoint)
from entangle.models.stereo_metrics import depth_from_disparity
from entangle.node import BaseNode, NotFittedError

log = logging.getLogger(__name__)

#: what :class:`StereoRefiner`'s training may change (``fine_tune``).
FINE_TUNE = ("all", "unmatched", "matched")

#: the ``format`` entry of a refiner checkpoint file (:func:`save_refiner`).
REFINER_FORMAT = "entangle.refine_net/1"


def _classical(inputs: Mapping[str, Any], shape: tuple[int, ...], owner: str) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``disparity`` (N, H, W) float and ``matched`` (N, H, W), checked against the images."""
    out = []
    for name in ("disparity", "matched"):
        if name not in inputs:
            raise ValueError(f"{owner}: missing input {name!r} (have {sorted(inputs)})")
        a = np.asarray(inputs[name])
        if a.shape != shape:
            raise ValueError(f"{owner}: input {name!r} must have the images' shape {shape} "
                             f"(N, H, W), got {a.shape}")
        out.append(a)
    disparity = out[0].astype(np.float32, copy=False)
    bad = np.flatnonzero(~np.isfinite(disparity).reshape(len(disparity), -1).all(axis=1))
    if bad.size:
        raise ValueError(f"{owner}: input 'disparity' of sample {int(bad[0])} holds NaN or inf")
    matched = out[1].astype(bool).reshape(len(disparity), -1)
    empty = np.flatnonzero(~matched.any(axis=1))
    if empty.size:
        raise ValueError(f"{owner}: input 'matched' of sample {int(empty[0])} has no valid pixel "
                         f"({empty.size} of {len(disparity)} samples): the classical matcher found "
                         f"nothing to refine")
    return disparity, out[1]


def _candidates(inputs: Mapping[str, Any], shape: tuple[int, ...], owner: str) -> np.ndarray | None:
    """Input ``candidates`` (N, K, H, W) float32 when wired (an :class:`EdgeAwareMeans` node),
    checked against the images and the refiner's ``K`` candidates; None when not wired."""
    if "candidates" not in inputs:
        return None
    a = np.asarray(inputs["candidates"])
    if a.shape != shape:
        raise ValueError(f"{owner}: input 'candidates' must have shape {shape} (N, len(smooth), H, W), "
                         f"got {a.shape}")
    return a


def _check_candidates(candidates: np.ndarray, disparity: np.ndarray, matched: np.ndarray, config,
                      owner: str) -> None:
    """Refuse candidates made with other windows or another range than this refiner's: scene 0
    is recomputed and compared (a few hundredths of a second)."""
    import torch

    from entangle.models.refine_net import edge_aware_candidates
    with torch.no_grad():
        d0 = torch.from_numpy(np.array(disparity[:1], dtype=np.float32))
        invalid = torch.from_numpy(~np.asarray(matched[:1], dtype=bool)).float()
        own = edge_aware_candidates(d0, invalid, config.smooth, float(config.smooth_range)).numpy()
    gap = float(np.max(np.abs(own - np.asarray(candidates[:1], dtype=np.float32)))) if own.size else 0.0
    if not gap <= 1e-3:
        raise ValueError(f"{owner}: input 'candidates' differs from this node's smooth="
                         f"{list(config.smooth)}, smooth_range={config.smooth_range} by up to {gap:.3g} px "
                         f"on sample 0: give the EdgeAwareMeans node the same windows and range")


class EdgeAwareMeans(BaseNode):
    """The edge-aware candidates of a classical disparity (what a split refiner blends), as a
    node: the same for every seed and both losses, so computed once per scene and stored.

    Output ``candidates`` (N, len(smooth), H, W) float32: per window size ``k`` of ``smooth``,
    the range-weighted mean of the matched disparities of the ``k × k`` window minus the
    disparity itself (:func:`entangle.models.refine_net.edge_aware_candidates`). Wire it to a
    :class:`StereoRefiner` with the same ``smooth`` and ``smooth_range`` (it checks).
    """

    input_kinds = {"disparity": "disparity", "matched": "mask"}
    output_kinds = {"candidates": "candidates"}
    metric = "changed"
    version = "1"
    uses_seed = False
    execution_params = ("batch_size",)

    def __init__(self, *, smooth: Any = (5, 9), smooth_range: float = 0.7, batch_size: int = 16):
        self.smooth = smooth
        self.smooth_range = smooth_range
        self.batch_size = batch_size

    def _config(self):
        from entangle.models.refine_net import RefinerConfig
        try:
            return RefinerConfig(smooth=tuple(self.smooth), smooth_range=float(self.smooth_range))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{type(self).__name__}: {err}") from None

    def fit(self, inputs: Mapping[str, Any], targets: Mapping[str, Any], *, seed: int) -> "EdgeAwareMeans":
        self._config()
        self.fitted_ = True
        return self

    def predict(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        import torch

        from entangle.models.refine_net import edge_aware_candidates
        self.check_is_fitted()
        config, owner = self._config(), repr(self)
        d = np.asarray(inputs["disparity"], dtype=np.float32)
        if d.ndim != 3:
            raise ValueError(f"{owner}: input 'disparity' must be (N, H, W), got shape {d.shape}")
        disparity, matched = _classical(inputs, d.shape, owner)
        out = np.zeros((len(d), len(config.smooth), *d.shape[1:]), dtype=np.float32)
        bs = max(int(self.batch_size), 1)
        with torch.no_grad():
            for b0 in range(0, len(d) if config.smooth else 0, bs):
                sl = slice(b0, b0 + bs)
                invalid = torch.from_numpy(~np.asarray(matched[sl], dtype=bool)).float()
                out[sl] = edge_aware_candidates(torch.from_numpy(np.array(disparity[sl])), invalid,
                                                config.smooth, float(config.smooth_range)).numpy()
        return {"candidates": out}

    def loss(self, predictions: Mapping[str, Any], targets: Mapping[str, Any]) -> np.ndarray:
        """No objective of its own: zero per sample."""
        return np.zeros(len(predictions["candidates"]))

    def score(self, predictions: Mapping[str, Any], targets: Mapping[str, Any]) -> dict[str, float]:
        """``changed``: the share of pixels a candidate moves by more than 0.01 px."""
        c = np.abs(np.asarray(predictions["candidates"]))
        return {"changed": float((c.max(axis=1) > 0.01).mean()) if c.size else 0.0}

    def state_dict(self) -> dict[str, Any]:
        return {"fitted_": np.array(True)}

    def load_state_dict(self, state: Mapping[str, Any]) -> "EdgeAwareMeans":
        self.fitted_ = True
        return self


class _RefinerNode(_StereoOutputs):
    """What every node holding a fitted refiner shares: prediction and the stored state."""

    input_kinds = {"left": "image", "right": "image", "disparity": "disparity", "matched": "mask",
                   "calib": "calib", "baseline": "scalar", "candidates": "candidates"}
    #: ``candidates``: the edge-aware candidates already computed by an :class:`EdgeAwareMeans`
    #: node (once per scene for every seed); not wired, the refiner computes them itself
    optional_inputs = ("candidates",)
    execution_params = ("device",)

    batch_size: int
    device: str

    def refiner_config(self):
        """The :class:`~entangle.models.refine_net.RefinerConfig` of the network."""
        raise NotImplementedError

    def _fitted_module(self):
        if not hasattr(self, "module_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit first")
        return self.module_

    @staticmethod
    def _tensors(left, right, disparity, matched, device):
        """Normalised (B, 3, H, W) images and (B, H, W) disparity and invalid mask on ``device``."""
        import torch

        def image(a):
            x = torch.from_numpy(np.array(a, dtype=np.uint8)).to(device)
            return (x.permute(0, 3, 1, 2).float().div_(255.0) - IMAGE_MEAN) / IMAGE_STD
        d = torch.from_numpy(np.array(disparity, dtype=np.float32)).to(device)
        invalid = torch.from_numpy(~np.asarray(matched, dtype=bool)).float().to(device)
        return image(left), image(right), d, invalid

    def predict(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """``disparity``, ``depth`` (N, H, W) and ``focal_baseline`` (N,): the classical
        disparity plus the learned correction."""
        import torch

        from entangle.models.stereo_net import fused_for_inference
        from entangle.training import resolve_device
        module = self._fitted_module()
        owner = repr(self)
        left, right = _images(inputs, owner)
        disparity, matched = _classical(inputs, left.shape[:3], owner)
        config = module.config
        candidates = _candidates(inputs, (len(left), len(config.smooth), *left.shape[1:3]), owner)
        if candidates is not None:
            _check_candidates(candidates, disparity, matched, config, owner)
        fb = focal_baseline(inputs, len(left), owner)
        dev = resolve_device(self.device)
        net = fused_for_inference(module).to(dev)
        out = np.zeros(left.shape[:3], dtype=np.float32)
        bs = max(int(self.batch_size), 1)
        with torch.inference_mode():
            for b0 in range(0, len(left), bs):
                sl = slice(b0, b0 + bs)
                given = None if candidates is None else torch.from_numpy(
                    np.array(candidates[sl], dtype=np.float32)).to(dev)
                out[sl] = net(*self._tensors(left[sl], right[sl], disparity[sl], matched[sl], dev),
                              given).cpu().numpy()
        return self._outputs(out, fb)

    def _module_state(self) -> dict[str, Any]:
        return {f"module.{k}": v.detach().cpu().clone()
                for k, v in self._fitted_module().state_dict().items()}

    def _load_module(self, state: Mapping[str, Any], config) -> None:
        import torch

        from entangle.models.refine_net import DisparityRefiner
        net = DisparityRefiner(config)
        net.load_state_dict({k[len("module."):]: torch.as_tensor(v) for k, v in state.items()
                             if k.startswith("module.")})
        self.module_ = net.eval()


class StereoRefiner(_RefinerNode):
    """A learned residual refiner of a classical disparity map, trained with a disparity or a
    depth loss (u vs u' of the case study).

    Parameters
    ----------
    objective : {"disparity", "depth"}
        Space of the training loss and of the per-image loss.
    channels, dilations, scale, max_correction, split, smooth, smooth_range, blend_start : the network
        (:class:`~entangle.models.refine_net.RefinerConfig`).
    epochs, lr, batch_size : training schedule (Adam, cosine decay of the rate to 0). ``epochs: 0``
        leaves the network as it starts: the classical disparity itself, or ``init``'s refiner.
    crop : [height, width] or None
        Train on random crops of this size (the features are computed on whole images first, so
        a crop's warps see the whole right image); None trains on whole images.
    object_weight : float
        Weight of the labelled cars' and pedestrians' own pixels in the training loss (every
        other pixel weighs 1): what the detectors read, weighted up alike for both objectives.
        Other than 1 it needs the target ``labels`` (the world's label rows); 1 is the plain
        mean over pixels, bit for bit.
    fine_tune : {"all", "unmatched", "matched"}
        What training changes (``split`` networks for the last two). ``unmatched`` freezes the
        matched pixels' head, so only the correction of the pixels the classical matcher left
        unmatched learns ("replace" without "refine"); ``matched`` freezes the last layer of the
        unmatched pixels' correction, so only the matched pixels' head learns ("refine"
        without "replace"). A frozen head as initialised (zero weights) keeps its pixels at
        the start's answer bit for bit: ``blend_start``'s edge-aware mean, SGBM's filled value.
    max_depth : float
        Pixels with ground truth farther than this (metres) are not trained on nor scored.
    beta : float
        Smooth-L1's transition from quadratic to linear, in the loss's unit (px or m).
    device : "auto", "cpu" or "cuda".
    """

    version = "1"
    target_kinds = {"disparity": "disparity", "labels": "labels"}
    optional_targets = ("labels",)  # read only when object_weight is not 1

    def __init__(self, *, objective: str = "disparity", channels: int = 16,
                 dilations: Any = (1, 2, 4, 1), scale: float = 64.0,
                 max_correction: float | None = None, split: bool = False, smooth: Any = (),
                 smooth_range: float = 0.7, blend_start: Any = (), epochs: int = 2,
                 lr: float = 1e-3, batch_size: int = 4, crop: Any = (96, 320),
                 max_depth: float = 80.0, beta: float = 1.0, object_weight: float = 1.0,
                 fine_tune: str = "all", device: str = "auto"):
        self.objective = objective
        self.channels = channels
        self.dilations = dilations
        self.scale = scale
        self.max_correction = max_correction
        self.split = split
        self.smooth = smooth
        self.smooth_range = smooth_range
        self.blend_start = blend_start
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.crop = crop
        self.max_depth = max_depth
        self.beta = beta
        self.object_weight = object_weight
        self.fine_tune = fine_tune
        self.device = device

    def refiner_config(self):
        from entangle.models.refine_net import RefinerConfig
        try:
            return RefinerConfig(channels=int(self.channels), dilations=tuple(self.dilations),
                                 scale=float(self.scale), max_correction=None if self.max_correction
                                 is None else float(self.max_correction), split=bool(self.split),
                                 smooth=tuple(self.smooth), smooth_range=float(self.smooth_range),
                                 blend_start=tuple(self.blend_start))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{type(self).__name__}: {err}") from None

    def init_from(self, other: "_RefinerNode") -> None:
        """Make the next :meth:`fit` start from ``other``'s fitted refiner (fine-tuning).

        Raises ``ValueError`` if ``other`` holds no refiner or another network config.
        """
        if not isinstance(other, _RefinerNode):
            raise ValueError(f"{self!r} can start only from a fitted StereoRefiner or "
                             f"RefinerCheckpoint, not a {type(other).__name__}")
        source = other._fitted_module()
        if self.refiner_config() != source.config:
            raise ValueError(f"{type(self).__name__}.init_from: the network configs differ, so the "
                             f"weights cannot be reused: this node's {self.refiner_config()} vs "
                             f"{source.config} (from {other!r})")
        self._init_state = {k: v.detach().cpu().clone() for k, v in source.state_dict().items()}
        self._init_origin = repr(other)

    def fit(self, inputs: Mapping[str, Any], targets: Mapping[str, Any], *, seed: int) -> "StereoRefiner":
        """Train the correction with the chosen objective; the seed fixes order and crops (and
        the initialisation of every layer but the zero last one)."""
        import torch

        from entangle.models.refine_net import BLOCK, DisparityRefiner, edge_aware_candidates, refiner_features
        from entangle.training import resolve_device, train

        self._check_objective()
        owner = repr(self)
        try:
            beta_ok = float(self.beta) >= 0 and np.isfinite(float(self.beta))
        except (TypeError, ValueError):
            beta_ok = False
        if not beta_ok:
            raise ValueError(f"{owner}: beta must be a finite number >= 0 (smooth-L1's knee; 0 is "
                             f"the L1 loss), got {self.beta!r}")
        left, right = _images(inputs, owner)
        n, h, w, _ = left.shape
        disparity, matched = _classical(inputs, (n, h, w), owner)
        fb_all = focal_baseline(inputs, n, owner)
        gt_all = _target_disparity(targets, (n, h, w), owner)
        objects = self._object_pixels(targets, gt_all, fb_all, owner)
        ch, cw = (h, w) if self.crop is None else (int(self.crop[0]), int(self.crop[1]))
        if not (0 < ch <= h and 0 < cw <= w):
            raise ValueError(f"{owner}: crop {ch}x{cw} must fit in the images ({h}x{w})")
        config = self.refiner_config()
        if self.fine_tune not in FINE_TUNE:
            raise ValueError(f"{owner}: fine_tune must be one of {FINE_TUNE}, got {self.fine_tune!r}")
        if self.fine_tune != "all" and not config.split:
            raise ValueError(f"{owner}: fine_tune {self.fine_tune!r} needs split: true (a head of "
                             f"its own for the matched pixels)")

        torch.manual_seed(seed)
        net = DisparityRefiner(config)
        init = getattr(self, "_init_state", None)
        if init is not None:
            net.load_state_dict(init)
            log.info("%s starts from the weights of %s", owner, self._init_origin)
        if self.fine_tune == "unmatched":
            net.local.requires_grad_(False)
            net.local_out.requires_grad_(False)
        elif self.fine_tune == "matched":
            net.out.requires_grad_(False)
        dev = resolve_device(self.device)
        gen = torch.Generator().manual_seed(seed)
        depth_loss = self.objective == "depth"
        # the edge-aware candidates depend on SGBM's answer alone: once per scene, not per step
        # (an EdgeAwareMeans node wired as `candidates` computes them once for every seed)
        candidates = _candidates(inputs, (n, len(config.smooth), h, w), owner)
        if candidates is not None:
            _check_candidates(candidates, disparity, matched, config, owner)
        else:
            candidates = np.zeros((n, len(config.smooth), h, w), dtype=np.float32)
            with torch.no_grad():
                for b0 in range(0, n if config.smooth else 0, 16):
                    sl = slice(b0, b0 + 16)
                    _, _, d0, invalid = self._tensors(left[:0], right[:0], disparity[sl], matched[sl], dev)
                    candidates[sl] = edge_aware_candidates(d0, invalid, config.smooth,
                                                           float(config.smooth_range)).cpu().numpy()

        def batch_loss(module, idx, step):
            idx = np.sort(np.asarray(idx))
            y0 = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
            x0 = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
            win = (slice(None), slice(y0, y0 + ch), slice(x0, x0 + cw))
            # the features of the crop's rows and BLOCK // 2 rows either side (what the averaged
            # photometric errors read), on whole rows (what the warps read): the crop's features
            # as on the whole image, for about half the cost
            rows = slice(max(y0 - BLOCK // 2, 0), min(y0 + ch + BLOCK // 2, h))
            l, r, d0, invalid = self._tensors(left[idx, rows], right[idx, rows], disparity[idx, rows],
                                              matched[idx, rows], dev)
            with torch.no_grad():
                feats = refiner_features(l, r, d0, invalid, float(config.scale), config.smooth,
                                         float(config.smooth_range),
                                         torch.from_numpy(np.array(candidates[idx][:, :, rows],
                                                                   dtype=np.float32)).to(dev))
                feats = feats[:, :, y0 - rows.start:y0 - rows.start + ch, x0:x0 + cw]
            d0 = d0[:, y0 - rows.start:y0 - rows.start + ch, x0:x0 + cw]
            gt = torch.from_numpy(gt_all[idx][win]).to(dev)
            fb = torch.from_numpy(fb_all[idx]).float().to(dev).view(-1, 1, 1)
            mask = (gt > 0) & (fb <= self.max_depth * gt)
            if not bool(mask.any()):
                return None
            pred = d0 + module.correction(feats)
            if depth_loss:
                pred, gt = fb / pred.clamp(min=1e-3), fb / gt.clamp(min=1e-6)
            if objects is None:
                return torch.nn.functional.smooth_l1_loss(pred[mask], gt[mask], beta=float(self.beta)), len(idx)
            weight = 1.0 + (float(self.object_weight) - 1.0) * torch.from_numpy(objects[idx][win]).to(dev)[mask]
            per = torch.nn.functional.smooth_l1_loss(pred[mask], gt[mask], beta=float(self.beta), reduction="none")
            return (weight * per).sum() / weight.sum(), len(idx)

        trained = train(net, batch_loss, epochs=int(self.epochs), n=n, batch_size=int(self.batch_size),
                        rng=gen, lr=float(self.lr), schedule="cosine", schedule_every="step",
                        device=dev, name=f"{owner} (seed {seed})")
        self.module_ = trained.module.cpu().eval()
        self.train_loss_ = np.asarray(trained.history, dtype=np.float64)
        return self

    def _object_pixels(self, targets: Mapping[str, Any], gt_disparity: np.ndarray,
                       fb: np.ndarray, owner: str) -> np.ndarray | None:
        """(N, H, W) bool: the labelled cars' and pedestrians' own pixels, those the loss weighs
        by ``object_weight``; None when the weight is 1 (a plain mean, no labels read)."""
        try:
            weight = float(self.object_weight)
        except (TypeError, ValueError):
            weight = float("nan")
        if not (np.isfinite(weight) and weight > 0):
            raise ValueError(f"{owner}: object_weight must be a finite number > 0 (1 weighs object "
                             f"pixels like the rest), got {self.object_weight!r}")
        if weight == 1.0:
            return None
        if "labels" not in targets:
            raise ValueError(f"{owner}: object_weight {weight:g} needs the target 'labels' (the "
                             f"scenes' label rows, e.g. targets: {{labels: world.labels}}); have "
                             f"{sorted(targets)}")
        from entangle.analysis.object_errors import foreground_mask
        labels = targets["labels"]
        if len(labels) != len(gt_disparity):
            raise ValueError(f"{owner}: target 'labels' holds {len(labels)} scenes, the images "
                             f"{len(gt_disparity)}")
        return foreground_mask(depth_from_disparity(gt_disparity, fb), labels)

    def state_dict(self) -> dict[str, Any]:
        import torch
        state = self._module_state()
        state["train_loss"] = torch.as_tensor(getattr(self, "train_loss_", np.zeros(0)))
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> "StereoRefiner":
        self._load_module(state, self.refiner_config())
        self.train_loss_ = np.asarray(state.get("train_loss", []), dtype=np.float64)
        return self


def save_refiner(node: _RefinerNode, path: str | Path, **meta: Any) -> str:
    """Write ``node``'s fitted refiner to ``path`` (:func:`~entangle.models.stereo.write_checkpoint`);
    returns its SHA-256."""
    return write_checkpoint(node._fitted_module(), path, REFINER_FORMAT, **meta)


class RefinerCheckpoint(CheckpointNode, _RefinerNode):
    """A pretrained refiner read from a file whose SHA-256 must match ``sha256``.

    Its "fit" loads and verifies the file (inputs, targets and seed are not read); it predicts
    like the :class:`StereoRefiner` it was saved from, and ``init`` of a :class:`StereoRefiner`
    accepts it. Relative paths are looked up in the working folder, then in the repository.
    """

    version = "1"

    def refiner_config(self):
        return self._checkpoint_config()

    def fit(self, inputs: Mapping[str, Any], targets: Mapping[str, Any], *,
            seed: int) -> "RefinerCheckpoint":
        """Load the file after checking its SHA-256 (``sha256`` names the field on a mismatch)."""

        from entangle.models.refine_net import RefinerConfig
        self._check_objective()
        self._load_checkpoint(REFINER_FORMAT, RefinerConfig)
        return self

    def state_dict(self) -> dict[str, Any]:
        state = self._module_state()
        state["config"] = np.asarray(json.dumps(self.refiner_config().to_dict(), sort_keys=True))
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> "RefinerCheckpoint":
        from entangle.models.refine_net import RefinerConfig
        self.config_ = RefinerConfig(**json.loads(str(np.asarray(state["config"]))))
        self._load_module(state, self.config_)
        return self

