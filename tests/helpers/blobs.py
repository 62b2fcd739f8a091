"""Gaussian blobs and a tiny MLP: fast, deterministic data for data-parallel track tests."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Split:
    """Inputs and labels (the fields a :class:`fedkit.data.datasets.Split` has)."""

    x: torch.Tensor
    y: torch.Tensor


@dataclass(frozen=True)
class Data:
    """Train and test splits (the fields the data-parallel trainer reads)."""

    train: Split
    test: Split


def blobs(n: int = 256, *, d: int = 8, classes: int = 3, seed: int = 1, n_test: int = 64) -> Data:
    """``n`` training and ``n_test`` test points around ``classes`` random centres in ``d`` dims."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, d, generator=gen) * 2
    y = torch.randint(0, classes, (n + n_test,), generator=gen)
    x = centers[y] + torch.randn(n + n_test, d, generator=gen)
    return Data(train=Split(x[:n], y[:n]), test=Split(x[n:], y[n:]))


def mlp(d: int = 8, hidden: int = 16, classes: int = 3) -> nn.Module:
    """A one-hidden-layer MLP (module-level, so spawned gloo ranks can import it)."""
    return nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, classes))
