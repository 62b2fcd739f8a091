"""Small deterministic federated problems for core tests (real-data tests live beside loaders)."""

from __future__ import annotations

import torch
from torch import nn

from fedkit.algorithm import ClientData
from fedkit.data.store import ClientStore

SYNTHETIC_UNIFORM = """
[data]
dataset = "synthetic"
partition = "natural"
alpha = 1.0
beta = 1.0
[data.options]
num_users = 10

[model]
name = "logreg"

[algorithm]
name = "fedavg"
weighting = "uniform"

[algorithm.local]
epochs = 1
batch_size = 10
lr = 0.05
"""
"""An experiment file's start for runner tests: FedAvg (uniform weights) with logistic regression
on Synthetic(1, 1) over 10 natural users; tests append [aggregator] and [run] tables."""


def toy_clients(
    num_clients: int = 6, *, seed: int = 0, equal: bool = False, dim: int = 12, classes: int = 3
) -> list[ClientData]:
    """Linearly separable-ish clients with different sizes (or equal when ``equal``)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, classes, generator=g)
    out = []
    for i in range(num_clients):
        n = 30 if equal else 20 + 7 * i
        x = torch.randn(n + 10, dim, generator=g) + 0.3 * i
        y = (x @ w + 0.5 * torch.randn(n + 10, classes, generator=g)).argmax(1)
        out.append(ClientData(x[:n], y[:n], x[n:], y[n:]))
    return out


def toy_store(num_clients: int = 6, **kw: object) -> ClientStore:
    """A :class:`ClientStore` over :func:`toy_clients`."""
    return ClientStore.from_clients(toy_clients(num_clients, **kw))  # type: ignore[arg-type]


def toy_model(dim: int = 12, classes: int = 3, seed: int = 0) -> nn.Module:
    """A two-layer MLP with fixed initialisation."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(dim, 16), nn.Tanh(), nn.Linear(16, classes))
