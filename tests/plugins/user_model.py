"""A user's own models, named by import path in tests (``tests.plugins.user_model:TinyNet``)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fedkit.plugins import model


class TinyNet(nn.Module):
    """Flatten, then one linear layer of ``num_classes`` outputs (``bias`` optional)."""

    def __init__(self, num_classes: int, input_shape: tuple[int, ...], bias: bool = True) -> None:
        super().__init__()
        self.fc = nn.Linear(math.prod(input_shape), num_classes, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.flatten(1))


@model
def two_layer(*, num_classes: int, input_shape: tuple[int, ...], hidden: int = 8) -> nn.Module:
    """A marked builder function."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.Linear(hidden, num_classes)
    )


def unmarked(*, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Not marked: an experiment file may not call it."""
    return nn.Linear(1, 1)


@model
def not_a_module(*, num_classes: int) -> object:
    """Marked, but returns no nn.Module."""
    return torch.zeros(num_classes)
