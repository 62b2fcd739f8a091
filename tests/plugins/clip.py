"""A user aggregator wrapper: clip each client's update to ``max_norm`` (L2 over all tensors),
then aggregate with ``inner`` — built from ``[aggregator] name = ... max_norm = ...`` and a nested
``[aggregator.inner]`` table."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from fedkit.aggregate import AggContext, Aggregator, Collective, WeightedMean
from fedkit.params import tree_leaves, tree_map


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClipNorm:
    """``u · min(1, max_norm / ‖u‖)`` on the client, then ``inner``."""

    max_norm: float
    inner: Aggregator[Any, Any, Any] = dataclasses.field(default_factory=WeightedMean)

    def __post_init__(self) -> None:
        if not (self.max_norm > 0 and math.isfinite(self.max_norm)):
            raise ValueError(f"max_norm must be a finite number > 0, got {self.max_norm!r}")

    def prepare(self, update: Any, weight: float, ctx: AggContext) -> Any:
        """Clip, then the inner aggregator's client step."""
        norm = math.sqrt(sum(float(t.double().pow(2).sum()) for _, t in tree_leaves(update)))
        factor = min(1.0, self.max_norm / norm) if norm > 0 else 1.0
        clipped = tree_map(lambda t: t * torch.tensor(factor, dtype=t.dtype), update)
        return self.inner.prepare(clipped, weight, ctx)

    def zero(self, like: Any) -> Any:
        """Inner's."""
        return self.inner.zero(like)

    def add(self, acc: Any, update: Any, weight: float) -> Any:
        """Inner's."""
        return self.inner.add(acc, update, weight)

    def merge(self, a: Any, b: Any) -> Any:
        """Inner's."""
        return self.inner.merge(a, b)

    def reduce(self, acc: Any, comm: Collective) -> Any:
        """Inner's."""
        return self.inner.reduce(acc, comm)

    def result(self, acc: Any, ctx: AggContext) -> Any:
        """Inner's."""
        return self.inner.result(acc, ctx)
