"""The multilayer perceptron every MLP-shaped model of the project is built from.

Toy nodes (``TorchNode(module=MLP)``), the reference learner (:class:`~entangle.models.mlp_node.
MLPNode`), the embedding classifier and the VAE's encoder and decoder are all this module, so
they initialise alike for a seed and store under the same parameter names (``body``, ``head``,
``skip``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

#: activations by name (the name is what configs give).
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
               "silu": nn.SiLU, "leaky_relu": nn.LeakyReLU}


def hidden_widths(hidden: int | Sequence[int], depth: int | None = None) -> list[int]:
    """Hidden-layer widths from a list of widths, or from one width repeated ``depth`` times."""
    if isinstance(hidden, (int, float)) and not isinstance(hidden, bool):
        return [int(hidden)] * (1 if depth is None else int(depth))
    widths = [int(h) for h in hidden]
    if depth is not None and int(depth) != len(widths):
        raise ValueError(f"MLP: depth={depth} but {len(widths)} hidden widths {widths}; give one")
    return widths


class MLP(nn.Module):
    """``in_features -> hidden layers (activation, dropout) -> out_features``.

    Parameters
    ----------
    in_features, out_features : input and output widths.
    hidden : one width (repeated ``depth`` times, once by default) or a list of widths; an empty
        list makes a linear model.
    depth : the number of hidden layers when ``hidden`` is one width.
    activation : a name in :data:`ACTIVATIONS`.
    dropout : dropout probability after each hidden activation (0: none).
    skip : add a bias-free linear path ``in -> out`` (with hidden layers), so every linear
        model is a member of the class exactly.
    with_features : ``forward`` returns ``(out, feat)``, ``feat`` the last hidden layer (the
        input itself without hidden layers), for nodes that output their embedding.
    """

    def __init__(self, in_features: int, hidden: int | Sequence[int] = 64, out_features: int = 1,
                 depth: int | None = None, *, activation: str = "relu", dropout: float = 0.0,
                 skip: bool = False, with_features: bool = False):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"MLP activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"MLP dropout must lie in [0, 1), got {dropout}")
        widths = hidden_widths(hidden, depth)
        layers: list[nn.Module] = []
        width = int(in_features)
        for h in widths:
            layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(float(dropout)))
            width = h
        # built in this order (body, head, skip) so a seed gives the same weights as ever
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, int(out_features))
        self.skip = nn.Linear(int(in_features), int(out_features), bias=False) if skip and widths else None
        self.with_features = bool(with_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        feat = self.body(x)                 # (batch, hidden[-1]), or (batch, in) without hidden layers
        out = self.head(feat)               # (batch, out)
        if self.skip is not None:
            out = out + self.skip(x)
        return (out, feat) if self.with_features else out
