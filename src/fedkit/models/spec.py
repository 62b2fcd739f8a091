"""A model as a small typed recipe: a registered name, its options, the data's shape and a seed.

:class:`ModelSpec` is what crosses process boundaries instead of a model (the ``processes``
executor's ranks, the data-parallel trainers, deployment workers): each process builds the same
initial weights from it, because construction is deterministic given ``torch.manual_seed``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fedkit.models.registry import build_model


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """How to build the model on any process: a name from :mod:`fedkit.models` and its options.

    Attributes:
        name: registered model name (``fedkit.models.model_names()``).
        num_classes: number of output classes.
        input_shape: shape of one input sample.
        options: builder keyword options.
        init_seed: ``torch.manual_seed`` applied before building, so every process builds the
            same initial weights.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    init_seed: int = 0

    def build(self) -> nn.Module:
        """A freshly initialised model (deterministic for ``init_seed``)."""
        torch.manual_seed(self.init_seed)
        return build_model(
            self.name,
            num_classes=self.num_classes,
            input_shape=tuple(self.input_shape),
            **dict(self.options),
        )

    def __call__(self) -> nn.Module:
        """Same as :meth:`build` (a ModelSpec is a picklable ``model_fn``)."""
        return self.build()
