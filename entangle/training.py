"""The one training loop of the project's torch models.

:func:`train` runs minibatch gradient descent on a module for a number of epochs: shuffled
minibatches of sample indices (or the caller's own batches), Adam or AdamW, an optional learning
rate schedule, a check that every loss is finite, optional early stopping with the best
validation weights restored, the weights of the last epochs, a per-epoch loss history and one
progress bar through :func:`entangle.progress.progress`. What a step computes stays with the
model: the caller passes ``loss_fn(module, batch, step)``.

It consumes randomness only through the generator it is given (the permutations) and whatever
``loss_fn`` draws, in that order, so a caller that seeds torch, builds its module and calls
:func:`train` gets the same weights for the same seed.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence, Union

import numpy as np
import torch
from torch import nn

from entangle.node import NodeError
from entangle.progress import progress

log = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "adamw")
#: learning-rate schedules: cosine annealing to 0, step decay (``gamma`` at ``milestones``,
#: fractions of the run), and the one-cycle policy (warm-up for ``pct_start`` of the run).
SCHEDULES = ("cosine", "step", "onecycle")

#: what ``loss_fn`` returns: the batch loss, the loss and its weight in the epoch's mean, or
#: None to skip the step (no update, nothing in the history).
StepLoss = Union[torch.Tensor, tuple[torch.Tensor, float], None]


@dataclass(frozen=True)
class Step:
    """Where a step is: its epoch, its index in the epoch and its index in the whole run."""

    epoch: int
    step: int
    global_step: int


@dataclass
class Trained:
    """What :func:`train` returns.

    ``module`` is on the CPU in eval mode, holding the best validation weights when a
    ``validate`` callback was given (else the last ones). ``history`` is the mean training loss
    of each epoch run (NaN for an epoch whose steps were all skipped), ``val_history`` the
    validation score of each (empty without ``validate``). ``checkpoints`` are the weights after
    each of the last ``keep_last`` epochs (CPU tensors, oldest first).
    """

    module: nn.Module
    history: np.ndarray
    epochs_run: int
    val_history: np.ndarray = field(default_factory=lambda: np.zeros(0))
    best_epoch: int | None = None
    checkpoints: list[dict[str, torch.Tensor]] = field(default_factory=list)


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` means CUDA when present, else CPU; anything else is passed to torch."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a module's state (a checkpoint that later steps do not change)."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def make_optimizer(module: nn.Module, name: str, lr: float,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam (weight decay as an L2 term in the gradient) or AdamW (decoupled weight decay)."""
    if name == "adam":
        return torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def make_schedule(opt: torch.optim.Optimizer, name: str, length: int, *,
                  milestones: Sequence[float] = (0.5, 0.75), gamma: float = 0.1,
                  pct_start: float = 0.15) -> torch.optim.lr_scheduler.LRScheduler:
    """A schedule over ``length`` scheduler steps (epochs or batches, as the caller steps it).

    ``"step"`` multiplies the rate by ``gamma`` after each fraction in ``milestones`` of the run
    (the paper's toys: x0.1 at 50 % and 75 %); ``"cosine"`` anneals it to 0; ``"onecycle"``
    warms up to the optimizer's rate for ``pct_start`` of the run, then anneals.
    """
    length = max(int(length), 1)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=length)
    if name == "step":
        if any(not 0.0 < float(f) < 1.0 for f in milestones):
            raise ValueError(f"step-decay milestones are fractions of the run in (0, 1), got {milestones}")
        at = sorted({max(1, int(round(float(f) * length))) for f in milestones})
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=at, gamma=gamma)
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups],
                                                   total_steps=length, pct_start=pct_start)
    raise ValueError(f"schedule must be None or one of {SCHEDULES}, got {name!r}")


def _index_batches(n: int, batch_size: int, rng: torch.Generator | np.random.Generator):
    """One epoch of shuffled index minibatches: a torch or numpy permutation, sliced in order."""
    if isinstance(rng, np.random.Generator):
        perm: Any = rng.permutation(n)
    else:
        perm = torch.randperm(n, generator=rng)
    for start in range(0, n, batch_size):
        yield perm[start:start + batch_size]


def train(module: nn.Module, loss_fn: Callable[[nn.Module, Any, Step], StepLoss], *,
          epochs: int, n: int | None = None, batch_size: int = 128,
          batches: Callable[[int], Iterable[Any]] | None = None,
          steps_per_epoch: int | None = None, seed: int = 0,
          rng: torch.Generator | np.random.Generator | None = None,
          optimizer: str = "adam", lr: float = 1e-3, weight_decay: float = 0.0,
          schedule: str | None = None, schedule_every: str = "epoch",
          milestones: Sequence[float] = (0.5, 0.75), gamma: float = 0.1, pct_start: float = 0.15,
          validate: Callable[[nn.Module], float] | None = None, patience: int | None = None,
          min_delta: float = 1e-7, keep_last: int = 0, device: str | torch.device = "cpu",
          name: str = "training",
          on_epoch: Callable[[int, float], None] | None = None) -> Trained:
    """Train ``module`` in place for ``epochs`` epochs; returns it on the CPU with its history.

    Parameters
    ----------
    module : the network, already built (seed torch before building it: the seed fixes the
        initialisation). It is moved to ``device`` and put in train mode at every epoch.
    loss_fn : ``loss_fn(module, batch, step)`` computes one step's loss: a scalar tensor, a
        ``(loss, weight)`` pair (its weight in the epoch's mean loss), or None to skip the step.
        Moving the batch to the device and any augmentation belong here.
    epochs : number of passes.
    n, batch_size : the built-in batching: each epoch, a permutation of ``range(n)`` from
        ``rng`` cut into index minibatches (a torch tensor, or a numpy array with a numpy
        ``rng``); a step's default weight is its number of samples.
    batches, steps_per_epoch : the caller's own batching instead: ``batches(epoch)`` yields an
        epoch's batches (default weight 1 each); ``steps_per_epoch`` sizes the per-step
        schedules and the progress bar.
    seed, rng : the permutations come from ``rng`` (a torch or numpy generator the caller may
        also draw from, e.g. for augmentation), else from a torch generator seeded with
        ``seed``. ``seed`` is also named in error messages.
    optimizer, lr, weight_decay : ``"adam"`` (default) or ``"adamw"``.
    schedule, schedule_every : None, ``"cosine"``, ``"step"`` or ``"onecycle"``, stepped every
        ``"epoch"`` or every ``"step"`` (an optimizer step; skipped steps do not count).
    milestones, gamma : step decay: the rate times ``gamma`` after each fraction of the run.
    pct_start : the one-cycle warm-up share.
    validate, patience, min_delta : ``validate(module)`` after every epoch (eval mode, no
        gradients; lower is better); the weights of the best epoch (better by more than
        ``min_delta``) are restored at the end, and with ``patience`` training stops after
        that many epochs without improvement.
    keep_last : keep the weights after each of the last ``keep_last`` epochs.
    device : ``"cpu"``, ``"cuda"``, ``"auto"`` or a torch device.
    name : names the progress bar, the log lines and the errors.
    on_epoch : ``on_epoch(epoch, mean_loss)`` after every epoch (e.g. to log at another level).

    Raises
    ------
    NodeError
        When a step's loss is NaN or infinite, naming ``name``, epoch, step and seed.
    """
    if (n is None) == (batches is None):
        raise ValueError(f"{name}: give exactly one of n (shuffled index minibatches) and batches")
    if schedule_every not in ("epoch", "step"):
        raise ValueError(f"schedule_every must be 'epoch' or 'step', got {schedule_every!r}")
    epochs = int(epochs)
    if n is not None:
        batch_size = int(batch_size)
        if batch_size < 1:
            raise ValueError(f"{name}: batch_size must be >= 1, got {batch_size}")
        steps_per_epoch = math.ceil(int(n) / batch_size)
        if rng is None:
            rng = torch.Generator().manual_seed(int(seed))
    if schedule is not None and schedule_every == "step" and steps_per_epoch is None:
        raise ValueError(f"{name}: a per-step schedule with the caller's batches needs steps_per_epoch")
    total = None if steps_per_epoch is None else epochs * int(steps_per_epoch)

    dev = resolve_device(device)
    module.to(dev)
    opt = make_optimizer(module, optimizer, lr, weight_decay)
    sched = None
    if schedule is not None:
        length = epochs if schedule_every == "epoch" else total
        sched = make_schedule(opt, schedule, length, milestones=milestones, gamma=gamma,
                              pct_start=pct_start)

    history: list[float] = []
    val_history: list[float] = []
    kept: deque[dict[str, torch.Tensor]] = deque(maxlen=max(int(keep_last), 1))
    best, best_state, best_epoch, stale = math.inf, None, None, 0
    global_step = 0
    bar = progress(total=total, desc=name, unit="step", leave=False)
    try:
        for epoch in range(epochs):
            module.train()
            epoch_batches = (_index_batches(int(n), batch_size, rng) if batches is None
                             else batches(epoch))
            loss_sum, weight_sum = 0.0, 0
            for i, batch in enumerate(epoch_batches):
                out = loss_fn(module, batch, Step(epoch, i, global_step))
                global_step += 1
                bar.update(1)
                if out is None:
                    continue
                loss, weight = out if isinstance(out, tuple) else (out, len(batch) if batches is None else 1)
                if not torch.isfinite(loss):
                    raise NodeError(f"{name}: training loss became {loss.item()} at epoch {epoch}, "
                                    f"step {i} (seed {seed})")
                opt.zero_grad()
                loss.backward()
                opt.step()
                if sched is not None and schedule_every == "step":
                    sched.step()
                loss_sum += loss.item() * weight
                weight_sum += weight
            if sched is not None and schedule_every == "epoch":
                sched.step()
            history.append(loss_sum / weight_sum if weight_sum else math.nan)
            if keep_last > 0:
                kept.append(weights(module))
            if validate is not None:
                module.eval()
                with torch.no_grad():
                    score = float(validate(module))
                val_history.append(score)
                if score < best - min_delta:
                    best, best_state, best_epoch, stale = score, weights(module), epoch, 0
                else:
                    stale += 1
            bar.set_postfix(epoch=epoch, loss=f"{history[-1]:.4g}", refresh=False)
            log.debug("%s epoch %d: loss %.4f", name, epoch, history[-1])
            if on_epoch is not None:
                on_epoch(epoch, history[-1])
            if validate is not None and patience is not None and stale >= patience:
                break
    finally:
        bar.close()
    if best_state is not None:
        module.load_state_dict(best_state)
    return Trained(module=module.cpu().eval(), history=np.asarray(history, dtype=np.float64),
                   epochs_run=len(history), val_history=np.asarray(val_history, dtype=np.float64),
                   best_epoch=best_epoch, checkpoints=list(kept))
