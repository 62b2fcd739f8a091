"""Per-client L2 clipping of the whole update: the client-side stage of DP-FedAvg (McMahan et
al. 2018, "Learning Differentially Private Recurrent Language Models").

``prepare`` scales a client's update ``Δ`` to ``Δ · min(1, S / ‖Δ‖₂)`` (the norm over every
tensor of the update together: "flat" clipping), then hands it to the ``inner`` stage; every
server-side step is the inner aggregator's. It bounds each client's contribution, which is what
calibrated noise (and robustness to scaled attacks) needs. A non-finite update is refused.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from fedkit.aggregate import AggContext, NonFiniteUpdateError, Stage
from fedkit.params import tree_leaves, tree_map

__all__ = ["ClipNorm", "NonFiniteUpdateError", "clip_update", "global_norm"]


def global_norm(update: Any) -> float:
    """L2 norm over every tensor leaf of ``update`` (in float64)."""
    total = torch.zeros((), dtype=torch.float64)
    for _, t in tree_leaves(update):
        total += t.double().pow(2).sum()
    return float(total.sqrt())


def clip_update(update: Any, bound: float, ctx: AggContext) -> tuple[Any, bool]:
    """``(Δ · min(1, bound / ‖Δ‖), ‖Δ‖ ≤ bound)``: the flat-clipped update and whether it was
    already inside the bound.

    Raises:
        NonFiniteUpdateError: ``Δ`` holds a NaN or infinite value.
    """
    norm = global_norm(update)
    if not math.isfinite(norm):
        raise NonFiniteUpdateError(f"client {ctx.client_id}: update has a non-finite value")
    if norm <= bound:
        return update, True
    scale = bound / norm
    return tree_map(lambda t: t * scale, update), False


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClipNorm(Stage):
    """Clip each client's update to L2 norm ``max_norm``, then aggregate with ``inner``.

    Attributes:
        max_norm: the clipping bound ``S`` (> 0).
        inner: the next stage (the weighted mean by default).
    """

    max_norm: float = 1.0

    def __post_init__(self) -> None:
        if not (self.max_norm > 0 and math.isfinite(self.max_norm)):
            raise ValueError(f"max_norm must be a finite number > 0, got {self.max_norm!r}")

    def prepare(self, update: Any, weight: float, ctx: AggContext) -> Any:
        """``Δ · min(1, S / ‖Δ‖)``, then the inner stage's ``prepare``."""
        clipped, _ = clip_update(update, self.max_norm, ctx)
        return self.inner.prepare(clipped, weight, ctx)
