"""A user aggregator stage: scale each client's update by ``factor`` on the client, then hand
it to ``inner`` — built from ``[aggregator] name = ... factor = ...`` and a nested
``[aggregator.inner]`` table. One file on :class:`fedkit.aggregate.Stage`, overriding only the
step it changes."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from fedkit.aggregate import AggContext, Stage
from fedkit.params import tree_map


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScaleUpdates(Stage):
    """``u · factor`` on the client, then ``inner``."""

    factor: float = 1.0

    def __post_init__(self) -> None:
        if not (self.factor > 0 and math.isfinite(self.factor)):
            raise ValueError(f"factor must be a finite number > 0, got {self.factor!r}")

    def prepare(self, update: Any, weight: float, ctx: AggContext) -> Any:
        """Scale, then the inner stage's client step."""
        return self.inner.prepare(tree_map(lambda t: t * self.factor, update), weight, ctx)
