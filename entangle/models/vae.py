"""A small variational autoencoder (torch, CPU-sized) giving inputs a latent space to search.

Misclassification regions (Defuse) need a generative model with a latent space where no exact
one exists: latents are sampled, decoded, run through the model under test, and the latents of
its mistakes are clustered. Inputs are flattened vectors in [0, 1] (e.g. 8×8 digits); the
likelihood is Bernoulli (binary cross-entropy), the prior standard normal.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from entangle.models.mlp import MLP
from entangle.node import BaseNode, NotFittedError, _stack_inputs
from entangle.training import train

log = logging.getLogger(__name__)


class VAE(nn.Module):
    """MLP encoder ``in -> hidden -> (mu, logvar)`` and decoder ``latent -> hidden -> in`` (sigmoid)."""

    def __init__(self, in_features: int, latent_dim: int = 6, hidden: Sequence[int] = (256, 128)):
        super().__init__()
        self.in_features = in_features
        self.latent_dim = latent_dim
        self.encoder = MLP(in_features, list(hidden), 2 * latent_dim)           # -> (mu, logvar)
        self.decoder = MLP(latent_dim, list(reversed(list(hidden))), in_features)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance, each (batch, latent)."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)                      # (batch, in)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoded inputs in [0, 1], (batch, in)."""
        return torch.sigmoid(self.decoder(z))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)   # reparameterisation
        return self.decode_logits(z), mu, logvar


def elbo_terms(model: VAE, x: torch.Tensor, beta: float = 1.0,
               sigma: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample reconstruction loss and ``beta`` × KL to the prior, each (batch,).

    The reconstruction loss is the Bernoulli negative log-likelihood (binary cross-entropy
    summed over inputs), or with ``sigma`` a Gaussian one, ``|x - x̂|² / (2 sigma²)``: with few
    inputs (64 pixels) the Bernoulli term is weak against the KL term and most latents collapse
    to the prior, which a small ``sigma`` prevents.
    """
    logits, mu, logvar = model(x)
    if sigma is None:
        rec = nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=1)
    else:
        rec = (torch.sigmoid(logits) - x).pow(2).sum(dim=1) / (2.0 * sigma ** 2)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)
    return rec, beta * kl


def train_vae(x: np.ndarray, *, latent_dim: int = 6, hidden: Sequence[int] = (256, 128),
              epochs: int = 60, lr: float = 2e-3, batch_size: int = 128, beta: float = 1.0,
              sigma: float | None = 0.1, warmup: float = 0.3, seed: int = 0) -> VAE:
    """Train a VAE on rows of ``x`` (n, d) in [0, 1] with Adam; the seed fixes init and order.

    The KL weight rises linearly from 0 to ``beta`` over the first ``warmup`` share of the
    epochs (KL annealing, against posterior collapse); ``sigma`` as in :func:`elbo_terms`.
    """
    torch.manual_seed(seed)
    X = torch.as_tensor(np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0))
    model = VAE(X.shape[1], latent_dim, hidden)

    def batch_loss(model, idx, step):
        start = step.step * batch_size
        ramp = min(1.0, (step.epoch + start / len(X)) / max(warmup * epochs, 1e-9)) if warmup > 0 else 1.0
        rec, kl = elbo_terms(model, X[idx], beta * ramp, sigma)
        return (rec + kl).mean()

    return train(model, batch_loss, epochs=int(epochs), n=len(X), batch_size=batch_size, seed=seed,
                 lr=lr, schedule="cosine", name="vae").module


class VAENode(BaseNode):
    """A VAE as a node: fitted on its input rows, it outputs the posterior mean ``z`` and ``logvar``.

    It has no targets (it is not scored); analyses read the fitted module with ``Run.fitted``
    to sample and decode latents, and the store caches it like any other node.
    """

    output_kinds = {"z": "array", "logvar": "array"}
    version = "1"

    def __init__(self, *, latent_dim: int = 6, hidden: Sequence[int] = (256, 128), epochs: int = 60,
                 lr: float = 2e-3, batch_size: int = 128, beta: float = 1.0,
                 sigma: float | None = 0.1, warmup: float = 0.3):
        self.latent_dim = latent_dim
        self.hidden = hidden
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.beta = beta
        self.sigma = sigma
        self.warmup = warmup

    def fit(self, inputs, targets, *, seed):
        X = _stack_inputs(inputs)
        self.module_ = train_vae(X, latent_dim=int(self.latent_dim), hidden=list(self.hidden),
                                 epochs=int(self.epochs), lr=float(self.lr),
                                 batch_size=int(self.batch_size), beta=float(self.beta),
                                 sigma=None if self.sigma is None else float(self.sigma),
                                 warmup=float(self.warmup), seed=seed)
        self.in_features_ = int(X.shape[1])
        return self

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and log-variance (n, latent) of raw input rows."""
        if not hasattr(self, "module_"):
            raise NotFittedError("VAENode is not fitted")
        with torch.no_grad():
            mu, logvar = self.module_.encode(torch.as_tensor(np.asarray(x, dtype=np.float32)
                                                             .reshape(len(x), -1)))
        return mu.numpy().astype(np.float64), logvar.numpy().astype(np.float64)

    def decode(self, z: np.ndarray) -> np.ndarray:
        """Decoded input rows (n, in) in [0, 1] for latents (n, latent)."""
        if not hasattr(self, "module_"):
            raise NotFittedError("VAENode is not fitted")
        with torch.no_grad():
            return self.module_.decode(torch.as_tensor(np.asarray(z, dtype=np.float32))).numpy() \
                .astype(np.float64)

    def predict(self, inputs):
        mu, logvar = self.encode(_stack_inputs(inputs))
        return {"z": mu, "logvar": logvar}

    def loss(self, predictions, targets):
        return np.zeros(len(predictions["z"]))

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {f"module.{k}": v.detach().cpu() for k, v in self.module_.state_dict().items()}
        state["in_features_"] = np.asarray(self.in_features_)
        return state

    def load_state_dict(self, state):
        self.in_features_ = int(np.asarray(state["in_features_"]))
        net = VAE(self.in_features_, int(self.latent_dim), list(self.hidden))
        net.load_state_dict({k[len("module."):]: v for k, v in state.items() if k.startswith("module.")})
        self.module_ = net.eval()
        return self
