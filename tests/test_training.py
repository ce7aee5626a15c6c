"""The training loop: finite losses, seeds, best-validation weights, schedules, batches, progress."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
import torch
from torch import nn

from entangle.models.mlp import MLP
from entangle.node import NodeError
from entangle.training import make_schedule, train

X = torch.linspace(-1, 1, 64).reshape(-1, 1)
Y = 3 * X + 0.5


def regression(seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    net = MLP(1, 8, 1)
    trained = train(net, lambda m, idx, step: nn.functional.mse_loss(m(X[idx]), Y[idx]),
                    **{"epochs": 5, "n": len(X), "batch_size": 16, "seed": seed, "lr": 0.01, **kwargs})
    return trained


def test_a_non_finite_loss_names_epoch_step_and_seed():
    def loss(m, idx, step):
        out = nn.functional.mse_loss(m(X[idx]), Y[idx])
        return out * float("nan") if (step.epoch, step.step) == (1, 2) else out

    torch.manual_seed(0)
    with pytest.raises(NodeError, match=r"toy: training loss became nan at epoch 1, step 2 \(seed 7\)"):
        train(MLP(1, 4, 1), loss, epochs=3, n=len(X), batch_size=16, seed=7, name="toy")


def test_the_same_seed_gives_the_same_weights():
    a, b, c = regression(0), regression(0), regression(1)
    for k, v in a.module.state_dict().items():
        assert torch.equal(v, b.module.state_dict()[k])
    assert not all(torch.equal(v, c.module.state_dict()[k]) for k, v in a.module.state_dict().items())
    assert a.history.shape == (5,) and a.history[-1] < a.history[0]
    assert not a.module.training and next(a.module.parameters()).device.type == "cpu"


def test_the_best_validation_weights_are_restored_and_patience_stops():
    scores = iter([3.0, 1.0, 2.0, 5.0, 0.5, 0.1])
    trained = regression(validate=lambda m: next(scores), patience=2, keep_last=10)
    # epoch 1 is best; epochs 2 and 3 are no better, so training stops after epoch 3
    assert trained.epochs_run == 4 and trained.best_epoch == 1
    assert trained.val_history.tolist() == [3.0, 1.0, 2.0, 5.0]
    assert len(trained.checkpoints) == 4
    best = trained.checkpoints[1]
    assert all(torch.equal(v, best[k]) for k, v in trained.module.state_dict().items())
    assert not all(torch.equal(v, trained.checkpoints[3][k]) for k, v in best.items())


def test_keep_last_keeps_the_last_epochs_weights():
    trained = regression(keep_last=2)
    assert len(trained.checkpoints) == 2
    assert all(torch.equal(v, trained.checkpoints[-1][k]) for k, v in trained.module.state_dict().items())


def test_step_decay_lowers_the_rate_at_the_given_fractions():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_schedule(opt, "step", 8, milestones=(0.5, 0.75), gamma=0.1)
    rates = []
    for _ in range(8):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose(rates, [1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])

    # through train: Adam on a constant gradient moves a weight by the rate at every step
    w = nn.Linear(1, 1, bias=False)
    moved: list[float] = []
    last = [w.weight.item()]

    def record(epoch, loss):
        moved.append(last[0] - w.weight.item())
        last[0] = w.weight.item()

    train(w, lambda m, batch, step: m.weight.sum(), epochs=8, batches=lambda epoch: [None],
          lr=0.1, schedule="step", on_epoch=record)
    np.testing.assert_allclose(moved, [0.1] * 4 + [0.01] * 2 + [0.001] * 2, rtol=1e-3)


def test_caller_batches_numpy_order_skipped_steps_and_weights():
    rng = np.random.default_rng(3)
    expected = np.random.default_rng(3).permutation(10)
    seen: list[np.ndarray] = []

    def loss(m, idx, step):
        seen.append(idx)
        return m(X[:1]).sum() * 0 + 2.0

    train(nn.Linear(1, 1), loss, epochs=1, n=10, batch_size=4, rng=rng)
    np.testing.assert_array_equal(np.concatenate(seen), expected)

    out = iter([None, (torch.tensor(1.0, requires_grad=True), 1.0),
                (torch.tensor(4.0, requires_grad=True), 3.0)])
    trained = train(nn.Linear(1, 1), lambda m, b, s: next(out), epochs=1, batches=lambda e: range(3))
    assert trained.history.tolist() == [pytest.approx((1.0 + 12.0) / 4.0)]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_follows_entangle_progress(monkeypatch):
    for setting, shown in (("0", False), ("1", True)):
        monkeypatch.setenv("ENTANGLE_PROGRESS", setting)
        err = Terminal()
        monkeypatch.setattr(sys, "stderr", err)
        regression(name="toy-bar")
        monkeypatch.undo()
        assert ("toy-bar" in err.getvalue()) == shown
